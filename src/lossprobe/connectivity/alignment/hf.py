"""Permutation groups of HF BERT and GPT-2 models, written from their module structure.

HF models do not trace with plain torch.fx (their forward passes branch on inputs and
configuration) and transformers no longer ships its own fx tracer, so the groups are
read from the modules, the way the blocks are known to compute:

* the residual stream (embeddings, every block's residual adds and LayerNorms, the final
  LayerNorm, the heads' inputs): one group for the whole model;
* per attention block: the heads (one group), the dimensions of Q and K within each head
  (one group per head), those of V and the output projection's inputs (one per head);
* per MLP: its hidden units;
* BERT's pooler: its units. The classifier's outputs and the vocabulary stay fixed; an LM
  head tied to the word embeddings permutes with the stream.

Anything else (relative position embeddings, cross-attention, a head it does not know)
is refused in one line: pass spec= with the groups written by hand.
"""

from __future__ import annotations

from torch import nn

from lossprobe.connectivity.alignment.groups import FIXED, Builder
from lossprobe.connectivity.alignment.spec import PermutationSpec, Probe
from lossprobe.errors import UserError

SUPPORTED = ("bert", "gpt2")


def is_hf(model: nn.Module) -> bool:
    cfg = getattr(model, "config", None)
    return cfg is not None and hasattr(cfg, "model_type") and hasattr(model, "base_model")


def hf_spec(model: nn.Module) -> PermutationSpec:
    mt = model.config.model_type
    if mt not in SUPPORTED:
        raise UserError(f"cannot derive permutation groups for HF model type '{mt}' (BERT and GPT-2 are supported); "
                        "pass spec=PermutationSpec(...) to align() with the groups written by hand")
    b = Builder(model, f"HF {mt} module structure")
    mods = dict(model.named_modules())
    base = model.base_model
    base_prefix = next(n for n, m in model.named_modules() if m is base)
    p = (base_prefix + ".") if base_prefix else ""
    seen = set()
    s = b.new("stream")

    def use(name):
        seen.add(name)
        return mods[name]

    def norm(name, cls):  # a LayerNorm over the channels of `cls`; activation matching reads its output
        b.channel_params(name, use(name), cls, ("weight", "bias"))
        b.probe(cls, Probe("module", name, -1))

    def mlp(fc, act, proj):  # hidden units between two Linears, read after the activation
        h = b.linear(fc, use(fc), s)
        b.probe(h, Probe("module", fc, -1))
        b.probe(h, Probe("module", act, -1, post=True))
        b.linear(proj, use(proj), h, out_cls=s)

    def heads_of(name):
        if not (name in mods and isinstance(mods[name], nn.Linear)):
            raise UserError(f"HF {mt}: expected a Linear layer '{name}'")
        return mods[name]

    if mt == "bert":
        cfg = model.config
        if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
            raise UserError("HF bert with relative position embeddings: pass spec= with the groups written by hand")
        if getattr(cfg, "add_cross_attention", False):
            raise UserError("HF bert with cross-attention: pass spec= with the groups written by hand")
        H = cfg.num_attention_heads
        for e in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
            if f"{p}embeddings.{e}" in mods:
                use(f"{p}embeddings.{e}")
                b.add(s, f"{p}embeddings.{e}.weight", 1)
        norm(f"{p}embeddings.LayerNorm", s)
        for i in range(cfg.num_hidden_layers):
            L = f"{p}encoder.layer.{i}"
            a = f"{L}.attention"
            q, k, v = (heads_of(f"{a}.self.{x}") for x in ("query", "key", "value"))
            for x in ("query", "key", "value"):
                use(f"{a}.self.{x}")
            use(f"{a}.output.dense")
            b.attention(f"{L}.attention", H, s, s,
                        (f"{a}.self.query", q, 0, None, "weight"), (f"{a}.self.key", k, 0, None, "weight"),
                        (f"{a}.self.value", v, 0, None, "weight"), (f"{a}.output.dense", mods[f"{a}.output.dense"]))
            for x, cls in (("query", f"{L}.attention:qk"), ("key", f"{L}.attention:qk"), ("value", f"{L}.attention:vo")):
                b.repair.append((f"{a}.self.{x}", cls))
                b.probe(cls, Probe("module", f"{a}.self.{x}", -1))
            norm(f"{a}.output.LayerNorm", s)
            mlp(f"{L}.intermediate.dense", f"{L}.intermediate", f"{L}.output.dense")
            norm(f"{L}.output.LayerNorm", s)
        pooled = None
        if f"{p}pooler.dense" in mods:
            pooled = b.linear(f"{p}pooler.dense", use(f"{p}pooler.dense"), s)
            b.probe(pooled, Probe("module", f"{p}pooler.dense", -1))
            b.probe(pooled, Probe("module", f"{p}pooler", -1, post=True))
        name = type(model).__name__
        if name.endswith(("SequenceClassification", "MultipleChoice")):
            head_in = pooled if pooled is not None else s
            b.fix(b.linear("classifier", use("classifier"), head_in))
        elif name.endswith(("TokenClassification",)):
            b.fix(b.linear("classifier", use("classifier"), s))
        elif name.endswith("QuestionAnswering"):
            b.fix(b.linear("qa_outputs", use("qa_outputs"), s))
        elif name.endswith(("MaskedLM", "LMHeadModel", "ForPreTraining")):
            t = "cls.predictions.transform"
            c = b.linear(f"{t}.dense", use(f"{t}.dense"), s)
            b.channel_params(f"{t}.LayerNorm", use(f"{t}.LayerNorm"), c, ("weight", "bias"))
            b.fix(b.linear("cls.predictions.decoder", use("cls.predictions.decoder"), c))
            for extra in ("cls.predictions", "cls.predictions.decoder"):
                if extra + ".bias" in b.state:
                    b.add(FIXED, extra + ".bias", 0)
            if "cls.seq_relationship" in mods:
                b.fix(b.linear("cls.seq_relationship", use("cls.seq_relationship"), pooled))
        elif model is not base:
            raise UserError(f"cannot derive permutation groups for the HF head of {name}; pass spec= with the groups "
                            "written by hand")
        if pooled is not None and name == type(base).__name__:
            b.fix(pooled)  # the base model returns the pooled output
    else:  # gpt2
        cfg = model.config
        if getattr(cfg, "add_cross_attention", False):
            raise UserError("HF gpt2 with cross-attention: pass spec= with the groups written by hand")
        H, E = cfg.n_head, cfg.n_embd
        for e in ("wte", "wpe"):
            use(f"{p}{e}")
            b.add(s, f"{p}{e}.weight", 1)
        for i in range(cfg.n_layer):
            L = f"{p}h.{i}"
            norm(f"{L}.ln_1", s)
            ca = use(f"{L}.attn.c_attn")
            b.attention(f"{L}.attn", H, s, s,
                        (f"{L}.attn.c_attn", ca, 0, E, "weight"), (f"{L}.attn.c_attn", ca, E, E, "weight"),
                        (f"{L}.attn.c_attn", ca, 2 * E, E, "weight"), (f"{L}.attn.c_proj", use(f"{L}.attn.c_proj")))
            b.repair.append((f"{L}.attn.c_attn", f"{L}.attn:qk"))
            b.probe(f"{L}.attn:qk", Probe("module", f"{L}.attn.c_attn", -1, start=0, length=E))
            b.probe(f"{L}.attn:qk", Probe("module", f"{L}.attn.c_attn", -1, start=E, length=E))
            b.probe(f"{L}.attn:vo", Probe("module", f"{L}.attn.c_attn", -1, start=2 * E, length=E))
            norm(f"{L}.ln_2", s)
            mlp(f"{L}.mlp.c_fc", f"{L}.mlp.act", f"{L}.mlp.c_proj")
        norm(f"{p}ln_f", s)
        name = type(model).__name__
        if name.endswith("LMHeadModel"):
            b.fix(b.linear("lm_head", use("lm_head"), s))
        elif name.endswith("SequenceClassification"):
            b.fix(b.linear("score", use("score"), s))
        elif name.endswith("TokenClassification"):
            b.fix(b.linear("classifier", use("classifier"), s))
        elif model is not base:
            raise UserError(f"cannot derive permutation groups for the HF head of {name}; pass spec= with the groups "
                            "written by hand")
        else:
            b.fix(s)  # the base model returns the stream
    # a module with parameters that the structure above does not cover would be left
    # unpermuted while its inputs move: refuse instead
    for name, m in model.named_modules():
        own = [k for k, _ in m.named_parameters(recurse=False)]
        if own and name not in seen and not any(name == x or name.startswith(x + ".") for x in seen):
            raise UserError(f"HF {mt}: module '{name}' ({type(m).__name__}) is not covered by the BERT/GPT-2 "
                            "structure lossprobe knows; pass spec= with the groups written by hand")
    if mt == "bert" and (type(model).__name__ == type(base).__name__):
        b.fix(s)  # the base model returns the stream
    return b.resolve()


__all__ = ["SUPPORTED", "hf_spec", "is_hf"]
