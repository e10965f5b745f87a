"""Deriving a model's permutation groups: from its torch.fx graph, or from the module
structure of HF BERT/GPT-2 models.

A union-find over *channel classes*: every Linear/Conv/Embedding output axis starts a
class; an operation either passes a tensor's class on, merges the classes of its operands
(a residual ``a + b``), or ties a class to the fixed input/output axes (never permuted).
Each class then becomes one permutation group (two for GroupNorm and attention, below).

* Tensors without a permuted axis — the input, anything computed from it before the first
  permuted layer, constants, sizes — pass through any operation; a reduction over the
  permuted axis (a mean, a norm) gives such a tensor too.
* Elementwise operations, activations, pooling, dropout, softmax and reductions over other
  axes pass the class on; ``view``/``reshape``/``flatten`` that keep the channel axis whole
  (a flattened [C, H, W] map feeds a Linear with C blocks of H·W inputs), ``transpose``,
  ``permute``, ``getitem``, ``split`` and ``cat`` along other axes move it.
* BatchNorm, LayerNorm, RMSNorm and GroupNorm parameters follow their channels. GroupNorm
  normalises within groups of channels, so its class is split: whole GroupNorm groups, and
  one permutation of the channels within each group, independent of the others (the
  whole symmetry group; `PermutationSpec.blocks` records the structure).
* A module called more than once, and tensors tied under several names, merge the classes
  that meet on one tensor axis, so the permutation stays consistent.
* Attention (``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``, HF BERT and GPT-2
  blocks): the heads are one group, the dimensions of Q and K within each head one group
  per head, those of V and the output projection's inputs one group per head; the MLP's
  hidden units another; the residual stream is one group for the whole model.

Shapes come from running the graph once on an example batch; without one, an input is
made up from the first layers where that is possible, and otherwise the derivation falls
back to rules that do not need shapes (refusing what they cannot decide).
"""

from __future__ import annotations

import itertools
import operator
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from lossprobe.connectivity.alignment.groups import FIXED, Builder, _hf_conv1d
from lossprobe.connectivity.alignment.hf import hf_spec, is_hf
from lossprobe.connectivity.alignment.spec import PermutationSpec, Probe
from lossprobe.core.batching import as_data, move, take
from lossprobe.core.losses import criterion
from lossprobe.errors import UserError, first_line


# --- values in the fx graph ----------------------------------------------------------------
@dataclass
class T:
    """A tensor with a permuted axis: its class, which axis, and the blocks of `inner`
    entries per unit along it (a flattened feature map); `ndim` when the shapes are known."""

    cls: str
    dim: int
    inner: object = 1  # int, or "auto" without shapes
    ndim: int | None = None


@dataclass
class Param:
    """A parameter or buffer used directly (fx get_attr)."""

    name: str


class Same:
    """A sequence of tensors that all carry the same permuted axis (split, chunk)."""

    def __init__(self, t: T):
        self.t = t


_ACT_NAMES = {"relu", "relu_", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "hardtanh",
              "hardswish", "hardsigmoid", "softplus", "tanh", "sigmoid", "softsign", "tanhshrink", "glu_"}
_UNARY_NAMES = _ACT_NAMES | {
    "neg", "abs", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
    "contiguous", "clone", "detach", "float", "double", "half", "bfloat16", "to", "type", "exp", "log", "log1p",
    "sqrt", "rsqrt", "square", "sin", "cos", "erf", "clamp", "clamp_", "clip", "sign", "reciprocal", "pow",
    "softmax", "log_softmax", "normalize", "requires_grad_", "nan_to_num", "round", "floor", "ceil"}
_POOL_NAMES = {"max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
               "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
               "adaptive_max_pool2d", "adaptive_max_pool3d", "lp_pool2d", "interpolate", "upsample"}
_MERGE_NAMES = {"add", "iadd", "add_", "sub", "isub", "sub_", "mul", "imul", "mul_", "truediv", "itruediv", "div",
                "div_", "maximum", "minimum", "where", "masked_fill", "masked_fill_", "rsub", "radd", "floordiv",
                "true_divide", "multiply", "subtract", "lerp"}
_REDUCE_NAMES = {"mean", "sum", "amax", "amin", "std", "var", "norm", "logsumexp", "prod", "nansum", "nanmean",
                 "max", "min", "all", "any", "count_nonzero"}
_FREE_NAMES = {"size", "dim", "numel", "getattr", "new_zeros", "new_ones", "new_full", "new_empty",
               "zeros_like", "ones_like", "full_like", "empty_like", "arange", "tensor"}
_PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid,
    nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.Tanhshrink,
)
_ACTIVATION_MODULES = _PASS_MODULES
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                     nn.Softmax, nn.LogSoftmax)
_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                 nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                 nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_RMSNORM = tuple(t for t in (getattr(nn, "RMSNorm", None),) if t is not None)


def _fname(node) -> str:
    t = node.target
    if node.op == "call_method":
        return str(t)
    name = getattr(t, "__name__", str(t))
    return name.strip("_") if name.startswith("__") else name


def _trace(model: nn.Module):
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as e:  # fx raises TraceError, TypeError, NotImplementedError, ...
        first = first_line(e)
        raise UserError(
            f"torch.fx could not trace {type(model).__name__} ({first}); pass spec=PermutationSpec(...) "
            "to align() with the permutation groups written by hand"
        ) from None


_TRACED: "weakref.WeakKeyDictionary[nn.Module, object]" = weakref.WeakKeyDictionary()


def traced(model: nn.Module):
    gm = _TRACED.get(model)
    if gm is None:
        gm = _trace(model)
        _TRACED[model] = gm
    return gm


class _GraphCall(nn.Module):
    """Calls a traced graph like the model (same arguments), reporting each node's value."""

    def __init__(self, gm, on_node):
        super().__init__()
        self.gm = gm
        self.on_node = on_node
        self.inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]

    def forward(self, *args, **kwargs):
        vals = list(args)
        for n in self.inputs[len(args):]:
            if n.target in kwargs:
                vals.append(kwargs.pop(n.target))
            elif n.args:
                vals.append(n.args[0])
            else:
                raise UserError(f"the model's input '{n.target}' is missing from the batch")
        if kwargs:
            raise UserError(f"the batch has '{next(iter(kwargs))}', which the traced model does not take")
        on_node = self.on_node

        class Rec(torch.fx.Interpreter):
            def run_node(self, n):
                out = super().run_node(n)
                on_node(n, out)
                return out

        return Rec(self.gm).run(*vals)


def _keep_modes(model: nn.Module):
    return [(m, m.training) for m in model.modules()]


def _restore(modes) -> None:
    for m, t in modes:
        m.training = t


def _shapes(model: nn.Module, gm, example, forward) -> dict:
    """Each fx node's output shape (torch.Size, a list of them for tuples) on `example`."""
    out: dict = {}

    def shape(v):
        if isinstance(v, torch.Tensor):
            return tuple(v.shape)
        if isinstance(v, (tuple, list)):
            return [shape(x) for x in v]
        return None

    fwd = criterion(forward=forward).forward
    modes = _keep_modes(model)
    try:
        model.eval()
        with torch.no_grad():
            fwd(_GraphCall(gm, lambda n, v: out.__setitem__(n.name, shape(v))),
                move(example, next(model.parameters()).device))
    except Exception as e:  # derive without shapes, and say why when that is not enough
        first = first_line(e)
        return {"<error>": first[:200]}
    finally:
        _restore(modes)
    return out


# --- the example batch -------------------------------------------------------------------------
def example_batch(model: nn.Module, data=None, forward=None, n: int = 32):
    """The first `n` samples of `data` (any data form, or one batch), or an input made up
    from the model's first layers (None when neither is possible)."""
    if data is not None:

        if isinstance(data, torch.Tensor):
            data = (data,)
        first = as_data(data, "align").first(n)
        return take(first, slice(0, n))
    return _made_up(model, forward)


def _made_up(model: nn.Module, forward):
    fwd = criterion(forward=forward).forward
    cfg = getattr(model, "config", None)
    candidates = []
    if cfg is not None and getattr(cfg, "vocab_size", None):
        ids = torch.randint(0, int(cfg.vocab_size), (2, 8), generator=torch.Generator().manual_seed(0))
        candidates.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    else:
        try:
            gm = traced(model)
        except UserError:
            return None
        inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
        mods = dict(gm.named_modules())
        g = torch.Generator().manual_seed(0)
        per_input = []
        for ph in inputs:
            first = None
            stack, seen = list(ph.users), set()
            while stack:
                u = stack.pop(0)
                if u in seen:
                    continue
                seen.add(u)
                if u.op == "call_module" and isinstance(mods[u.target], (nn.Linear, nn.Embedding, *_CONV)):
                    first = mods[u.target]
                    break
                stack.extend(u.users)
            if first is None:
                if ph.args:  # an optional input: leave it to its default
                    continue
                return None
            if isinstance(first, nn.Linear):
                per_input.append([torch.randn(8, first.in_features, generator=g)])
            elif isinstance(first, nn.Embedding):
                per_input.append([torch.randint(0, first.num_embeddings, (4, 6), generator=g)])
            else:
                k = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[type(first)]
                per_input.append([torch.randn(2, first.in_channels, *([s] * k), generator=g)
                                  for s in (28, 32, 12, 16, 8, 24, 64)])

        for combo in itertools.product(*per_input):
            candidates.append((*combo, None) if len(combo) != 1 else (combo[0],))
    modes = _keep_modes(model)
    try:
        model.eval()
        for c in candidates:
            try:
                with torch.no_grad():
                    fwd(model, move(c, next(model.parameters()).device))
                return c
            except Exception:
                continue
    finally:
        _restore(modes)
    return None


# --- the fx derivation ---------------------------------------------------------------------------
def derive(model: nn.Module, example=None, forward=None) -> PermutationSpec:
    """The permutation spec of `model` (HF BERT/GPT-2 from their module structure, anything
    else from its fx graph)."""
    if is_hf(model):
        return hf_spec(model)
    gm = traced(model)
    example = example_batch(model, example, forward)
    shapes = _shapes(model, gm, example, forward) if example is not None else {}
    return _FxDerivation(model, gm, shapes).run()


class _FxDerivation:
    def __init__(self, model, gm, shapes):
        self.model = model
        self.gm = gm
        self.shapes = shapes
        self.shape_error = shapes.pop("<error>", None)
        self.b = Builder(model, "fx-derived" if shapes else "fx-derived (no shapes)")
        self.modules = dict(gm.named_modules())
        self.val: dict[str, object] = {}
        self.node = None

    # helpers
    def unsupported(self, what: str):
        if "shapes unknown" in what and self.shape_error:
            what = what.replace("shapes unknown: pass an example batch",
                                f"shapes unknown: the example batch failed in the traced model: {self.shape_error}")
        raise UserError(
            f"cannot derive permutation groups through {what} (fx node '{self.node.name}'); "
            "pass spec=PermutationSpec(...) to align() with the groups written by hand"
        )

    def shape(self, node=None):
        s = self.shapes.get((node or self.node).name)
        return s if isinstance(s, tuple) else None

    def v(self, a):
        if isinstance(a, torch.fx.Node):
            return self.val.get(a.name)
        return None

    def tensors(self, node):
        found = []
        torch.fx.node.map_arg((node.args, node.kwargs), lambda a: found.append(a) or a)
        return found

    def out_t(self, cls, dim, inner=1, ndim=None) -> T:
        s = self.shape()
        nd = len(s) if s is not None else ndim
        if nd is not None and dim < 0:
            dim += nd
        return T(cls, dim, inner, nd)

    def run(self) -> PermutationSpec:
        for node in self.gm.graph.nodes:
            self.node = node
            self.val[node.name] = self.visit(node)
        return self.b.resolve()

    def visit(self, node):
        b = self.b
        if node.op == "placeholder":
            return None
        if node.op == "get_attr":
            return Param(node.target)
        if node.op == "output":
            for a in self.tensors(node):
                for t in self._flat(self.v(a)):
                    b.fix(t.cls)
            return None
        if node.op == "call_module":
            return self.module(node, self.modules[node.target], node.target)
        return self.function(node)

    def _flat(self, v):
        if isinstance(v, T):
            return [v]
        if isinstance(v, Same):
            return [v.t]
        if isinstance(v, (tuple, list)):
            return [t for x in v for t in self._flat(x)]
        return []

    def args_vals(self, node):
        return [self.v(a) for a in self.tensors(node)]

    # --- modules -----------------------------------------------------------------------
    def module(self, node, mod, prefix):
        b = self.b
        vals = self.args_vals(node)
        ts = [x for v in vals for x in self._flat(v)]
        params = [v for v in vals if isinstance(v, Param)]
        if params:
            self.unsupported(f"module '{prefix}' called on a parameter used outside its module")
        src = ts[0] if ts else None
        in_cls = src.cls if src is not None else None
        if isinstance(mod, (nn.Linear, *_CONV)) or _hf_conv1d(mod):
            if len(ts) > 1:
                self.unsupported(f"module '{prefix}' with several permuted inputs")
            conv = isinstance(mod, _CONV)
            if src is not None:
                if conv and src.dim != 1:
                    self.unsupported(f"Conv '{prefix}' on a tensor whose permuted axis is not axis 1")
                if not conv and src.ndim is not None and src.dim != src.ndim - 1:
                    self.unsupported(f"'{prefix}' on a tensor whose permuted axis is not the last")
            if conv and mod.groups != 1:
                if mod.groups == mod.in_channels == mod.out_channels:  # depthwise: channel by channel
                    out = in_cls or b.new(f"{prefix}:out")
                    b.add(out, f"{prefix}.weight", 0)
                    if mod.bias is not None:
                        b.add(out, f"{prefix}.bias", 0)
                    b.repair.append((prefix, out))
                    b.probe(out, Probe("node", node.name, 1))
                    return self.out_t(out, 1)
                self.unsupported(f"grouped convolution '{prefix}' (groups={mod.groups})")
            inner = (src.inner if src is not None else 1)
            out = b.linear(prefix, mod, in_cls, inner)
            b.probe(out, Probe("node", node.name, 1 if conv else -1))
            return self.out_t(out, 1 if conv else -1)
        if isinstance(mod, nn.Embedding):
            if src is not None:
                self.unsupported(f"Embedding '{prefix}' on a permuted tensor")
            out = b.new(f"{prefix}:out")
            b.add(out, f"{prefix}.weight", 1)
            b.probe(out, Probe("node", node.name, -1))
            return self.out_t(out, -1)
        if isinstance(mod, nn.MultiheadAttention):
            return self.mha(node, mod, prefix, ts)
        if isinstance(mod, nn.TransformerEncoderLayer):
            return self.out_t(self.encoder_layer(node, mod, prefix, in_cls), -1)
        if isinstance(mod, nn.TransformerEncoder):
            c = in_cls
            for i, layer in enumerate(mod.layers):
                c = self.encoder_layer(node, layer, f"{prefix}.layers.{i}", c)
            if mod.norm is not None:
                b.channel_params(f"{prefix}.norm", mod.norm, c)
            return self.out_t(c, -1)
        if not ts:  # no permuted input: the module's parameters stay as they are
            return None
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) or isinstance(mod, nn.modules.instancenorm._InstanceNorm):
            if src.dim != 1:
                self.unsupported(f"{type(mod).__name__} '{prefix}' on a tensor whose permuted axis is not axis 1")
            b.channel_params(prefix, mod, src.cls)
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                arg = node.args[0] if node.args else None
                if arg is not None and getattr(arg, "op", None) == "call_module" and len(arg.users) == 1 and \
                        isinstance(self.modules[arg.target], (nn.Linear, *_CONV)):
                    b.followed_by_bn.add(arg.target)
                b.norms.append(prefix)
            b.probe(src.cls, Probe("node", node.name, 1))
            return T(src.cls, src.dim, src.inner, src.ndim)
        if isinstance(mod, (nn.LayerNorm, *_RMSNORM)):
            shape = tuple(mod.normalized_shape)
            if len(shape) != 1:
                self.unsupported(f"{type(mod).__name__} '{prefix}' over {len(shape)} axes")
            if src.ndim is not None and src.dim != src.ndim - 1:
                self.unsupported(f"{type(mod).__name__} '{prefix}' over an axis that is not the permuted one")
            b.channel_params(prefix, mod, src.cls, ("weight", "bias"))
            b.probe(src.cls, Probe("node", node.name, -1))
            return T(src.cls, src.dim, src.inner, src.ndim)
        if isinstance(mod, nn.GroupNorm):
            if src.dim != 1:
                self.unsupported(f"GroupNorm '{prefix}' on a tensor whose permuted axis is not axis 1")
            if mod.num_groups > 1:
                b.structure_of(src.cls, mod.num_groups, b.new(f"{prefix}:groups"), f"GroupNorm '{prefix}'")
            b.channel_params(prefix, mod, src.cls, ("weight", "bias"))
            b.probe(src.cls, Probe("node", node.name, 1))
            return T(src.cls, src.dim, src.inner, src.ndim)
        if isinstance(mod, nn.Flatten):
            return self.flatten(src, mod.start_dim, mod.end_dim)
        if isinstance(mod, _POOL_MODULES):
            if src.dim != 1:
                self.unsupported(f"pooling '{prefix}' on a tensor whose permuted axis is not axis 1")
            return T(src.cls, src.dim, src.inner, src.ndim)
        if isinstance(mod, _PASS_MODULES + _IDENTITY_MODULES):
            if next(mod.parameters(recurse=False), None) is not None:
                self.unsupported(f"module '{prefix}' ({type(mod).__name__}) with parameters")
            out = T(src.cls, src.dim, src.inner, src.ndim)
            if isinstance(mod, _ACTIVATION_MODULES):
                b.probe(src.cls, Probe("node", node.name, src.dim if src.ndim is not None else (1 if src.dim == 1 else -1),
                                       post=True))
            return out
        self.unsupported(f"module '{prefix}' of type {type(mod).__name__}")

    def mha(self, node, mod, prefix, ts):
        b = self.b
        if mod.bias_k is not None or mod.bias_v is not None:
            self.unsupported(f"MultiheadAttention '{prefix}' with add_bias_kv")
        c = None
        args = [self.v(a) for a in node.args[:3]]
        for a in args:
            cls = a.cls if isinstance(a, T) else None
            c = cls if c is None else b.join(c, cls)
        if any(not isinstance(a, T) for a in args) and c is not None:
            b.fix(c)
        out = b.new(f"{prefix}:out")
        self._attention_members(prefix, mod, c, out)
        b.probe(out, Probe("node", node.name, -1, index=0))
        return (self.out_t(out, -1, ndim=len(self.shapes[node.name][0]) if self.shapes.get(node.name) else None), None)

    def _attention_members(self, prefix, mod, in_cls, out_cls):
        E, H = mod.embed_dim, mod.num_heads
        if mod._qkv_same_embed_dim:
            q = (f"{prefix}", mod, 0, E, "in_proj_weight")
            k = (f"{prefix}", mod, E, E, "in_proj_weight")
            v = (f"{prefix}", mod, 2 * E, E, "in_proj_weight")
        else:
            q = (f"{prefix}", mod, 0, None, "q_proj_weight")
            k = (f"{prefix}", mod, 0, None, "k_proj_weight")
            v = (f"{prefix}", mod, 0, None, "v_proj_weight")
        self.b.attention(prefix, H, in_cls, out_cls, q, k, v, (f"{prefix}.out_proj", mod.out_proj))
        if mod._qkv_same_embed_dim:  # activation matching reads Q, K, V computed from the module's inputs
            for cls, start in ((f"{prefix}:qk", 0), (f"{prefix}:qk", E), (f"{prefix}:vo", 2 * E)):
                self.b.probe(cls, Probe("mha_proj", prefix, -1, start=start, length=E))
        # the projections' biases live in in_proj_bias
        if mod.in_proj_bias is not None and not mod._qkv_same_embed_dim:
            self.unsupported(f"MultiheadAttention '{prefix}' with different key/value sizes and biases")
        self.b.repair = [(m, c) for m, c in self.b.repair if m != f"{prefix}.out_proj"]  # not called as a module

    def encoder_layer(self, node, layer, prefix, in_cls):
        b = self.b
        s = in_cls if in_cls is not None else FIXED  # the residual adds the input to the stream
        self._attention_members(f"{prefix}.self_attn", layer.self_attn, s, s)
        h = b.linear(f"{prefix}.linear1", layer.linear1, s)
        b.linear(f"{prefix}.linear2", layer.linear2, h, out_cls=s)
        b.repair = [(m, c) for m, c in b.repair if not m.startswith(f"{prefix}.")]  # the fast path skips them
        for nm in ("norm1", "norm2"):
            b.channel_params(f"{prefix}.{nm}", getattr(layer, nm), s, ("weight", "bias"))
        b.probe(h, Probe("module_in", f"{prefix}.linear2", -1, post=True))
        b.probe(s, Probe("node", node.name, -1))
        return s

    # --- functions and methods -------------------------------------------------------------
    def function(self, node):
        b = self.b
        name = _fname(node)
        vals = self.args_vals(node)
        first = self.v(node.args[0]) if node.args else None
        if node.op == "call_function" and node.target is operator.getitem:
            return self.getitem(first, node.args[1])
        if node.op == "call_function" and node.target is getattr:
            return None
        flat = [x for v in vals for x in self._flat(v)]
        params = [v for v in vals if isinstance(v, Param)]
        if not flat:
            return None  # nothing permuted: any operation is safe
        if name in _FREE_NAMES:
            return None
        if name == "type_as":
            return T(first.cls, first.dim, first.inner, first.ndim) if isinstance(first, T) else None
        if name in ("to", "type", "float", "double", "half", "contiguous", "clone", "detach") or \
                (name in _UNARY_NAMES and len(flat) == 1 and not params and isinstance(first, T)):
            src = first if isinstance(first, T) else flat[0]
            if name in ("softmax", "log_softmax", "normalize"):
                pass  # equivariant along any axis
            out = T(src.cls, src.dim, src.inner, src.ndim)
            if name in _ACT_NAMES:
                b.probe(src.cls, Probe("node", node.name, src.dim if src.ndim is not None else
                                       (1 if src.dim == 1 else -1), post=True))
            return out
        if name in _POOL_NAMES:
            src = flat[0]
            if src.dim != 1:
                self.unsupported(f"'{name}' on a tensor whose permuted axis is not axis 1")
            return T(src.cls, src.dim, src.inner, src.ndim)
        if name in _MERGE_NAMES:
            return self.merge(node, name)
        if name in _REDUCE_NAMES or name in ("argmax", "argmin"):
            return self.reduce(node, name, first)
        if name in ("flatten",):
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            return self.flatten(first, start, end)
        if name in ("view", "reshape", "unflatten", "view_as", "reshape_as"):
            return self.reshape(first, name)
        if name in ("transpose", "swapaxes", "swapdims", "permute", "movedim", "t", "unsqueeze", "squeeze"):
            return self.move(first, name, node)
        if name in ("split", "chunk", "unbind", "tensor_split", "split_with_sizes"):
            return self.split(first, name, node)
        if name in ("cat", "concat", "concatenate", "stack"):
            return self.cat(node, name)
        self.unsupported(f"operation '{name}'")

    def _dim_arg(self, node, pos: int, key: str = "dim", default=None):
        if len(node.args) > pos:
            return node.args[pos]
        return node.kwargs.get(key, default)

    def merge(self, node, name):
        b = self.b

        out_shape = self.shape()
        nd = len(out_shape) if out_shape is not None else None
        ts: list[T] = []
        others: list = []
        for a in list(node.args) + list(node.kwargs.values()):
            if isinstance(a, torch.fx.Node):
                v = self.v(a)
                (ts if isinstance(v, T) else others).append((a, v))
        cls = None
        pos = None
        inner = None
        if not ts:
            self.unsupported(f"'{name}' of a permuted tensor given in an unusual position")
        for a, t in ts:
            p = t.dim if (t.ndim is None or nd is None) else t.dim - t.ndim + nd
            if pos is None:
                pos, inner = p, t.inner
            elif p != pos or t.inner != inner:
                self.unsupported(f"'{name}' of tensors whose permuted axes do not line up")
            cls = t.cls if cls is None else b.join(cls, t.cls)
        for a, v in others:
            s = self.shape(a)
            if s is not None and nd is not None:
                k = pos - (nd - len(s))
                if k < 0 or s[k] == 1:
                    continue  # broadcast along the permuted axis: any permutation is fine
                if isinstance(v, Param) and isinstance(inner, int) and s[k] == out_shape[pos]:
                    b.add(cls, v.name, k, inner)
                    continue
            b.fix(cls)
            cls = FIXED
        if name in ("add", "iadd", "add_", "sub", "isub", "sub_", "radd", "rsub"):
            b.probe(cls, Probe("node", node.name, pos if nd is not None else (1 if pos == 1 else -1)))
        t0 = ts[0][1]
        return T(cls, pos, inner, nd if nd is not None else t0.ndim)

    def reduce(self, node, name, src):
        if not isinstance(src, T):
            self.unsupported(f"'{name}' of a permuted tensor given in an unusual position")
        dims = self._dim_arg(node, 1)
        keep = bool(self._dim_arg(node, 2, "keepdim", False))
        if dims is None:
            if name in ("argmax", "argmin"):
                self.b.fix(src.cls)
            return None
        dims = (dims,) if isinstance(dims, int) else tuple(dims)
        if not all(isinstance(d, int) for d in dims):
            self.unsupported(f"'{name}' over dims {dims}")
        nd = src.ndim
        if nd is None:
            if src.dim == 1 and all(d >= 2 for d in dims):  # pooling over spatial axes
                return T(src.cls, 1, src.inner, None)
            self.unsupported(f"'{name}' over dims {dims} (shapes unknown: pass an example batch)")
        dims = tuple(d % nd for d in dims)
        with_indices = name in ("max", "min")
        if src.dim in dims:
            if name in ("argmax", "argmin", "max", "min"):  # indices of units: they must stay where they are
                self.b.fix(src.cls)
            return (None, None) if with_indices else None  # nothing permuted is left
        new_dim = src.dim if keep else src.dim - sum(1 for d in dims if d < src.dim)
        t = T(src.cls, new_dim, src.inner, nd if keep else nd - len(dims))
        return (t, t) if with_indices else t

    def flatten(self, src: T, start: int, end: int):
        nd = src.ndim
        if nd is None:
            if start == 1 and end == -1 and src.dim == 1:
                return T(src.cls, 1, "auto", 2)
            self.unsupported(f"flatten(start_dim={start}, end_dim={end}) (shapes unknown: pass an example batch)")
        start, end = start % nd, end % nd
        in_shape = self.shape(self.node.args[0]) if self.node.op != "call_module" else self.shape(self.node.args[0])
        if src.dim < start:
            return T(src.cls, src.dim, src.inner, nd - (end - start))
        if src.dim > end:
            return T(src.cls, src.dim - (end - start), src.inner, nd - (end - start))
        if src.dim != start:
            self.unsupported("a flatten that merges axes before the permuted one into it")
        if in_shape is None:
            self.unsupported("flatten (shapes unknown: pass an example batch)")
        rest = 1
        for d in range(src.dim + 1, end + 1):
            rest *= in_shape[d]
        return T(src.cls, start, src.inner * rest, nd - (end - start))

    def reshape(self, src: T, name: str):
        node = self.node
        in_shape, out_shape = self.shape(node.args[0]), self.shape()
        if in_shape is None or out_shape is None:
            shape = node.args[1:]
            if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
                shape = tuple(shape[0])
            if name in ("view", "reshape") and len(shape) == 2 and shape[1] == -1 and src.dim == 1:
                return T(src.cls, 1, "auto", 2)  # x.view(x.size(0), -1): a flatten
            self.unsupported(f"'{name}' (shapes unknown: pass an example batch)")
        ins = [(i, n) for i, n in enumerate(in_shape) if n != 1]
        outs = [(j, n) for j, n in enumerate(out_shape) if n != 1]
        groups, i, j = [], 0, 0
        while i < len(ins) and j < len(outs):
            gi, gj, pi, pj = [ins[i][0]], [outs[j][0]], ins[i][1], outs[j][1]
            i, j = i + 1, j + 1
            while pi != pj:
                if pi < pj and i < len(ins):
                    gi.append(ins[i][0])
                    pi *= ins[i][1]
                    i += 1
                elif j < len(outs):
                    gj.append(outs[j][0])
                    pj *= outs[j][1]
                    j += 1
                else:
                    break
            groups.append((gi, gj))
        for gi, gj in groups:
            if src.dim not in gi:
                continue
            if gi[0] == src.dim and len(gj) == 1:  # the permuted axis, with the axes after it merged in
                rest = 1
                for d in gi[1:]:
                    rest *= in_shape[d]
                inner = src.inner * rest if isinstance(src.inner, int) else "auto"
                return T(src.cls, gj[0], inner, len(out_shape))
            if gi == [src.dim] and isinstance(src.inner, int) and src.inner > 1:  # unflattening a flattened map
                rest = 1
                for d in gj[1:]:
                    rest *= out_shape[d]
                if rest == src.inner:
                    return T(src.cls, gj[0], 1, len(out_shape))
            if gi == [src.dim]:
                self.unsupported(f"'{name}' that splits the permuted axis of size {in_shape[src.dim]} into "
                                 f"{[out_shape[d] for d in gj]} (e.g. into attention heads)")
            break
        self.unsupported(f"'{name}' from {list(in_shape)} to {list(out_shape)} that mixes the permuted axis with others")

    def move(self, src: T, name: str, node):
        nd = src.ndim
        if nd is None:
            self.unsupported(f"'{name}' (shapes unknown: pass an example batch)")
        out_nd = len(self.shape()) if self.shape() is not None else nd
        args = list(node.args[1:])
        d = src.dim
        if name in ("transpose", "swapaxes", "swapdims"):
            a = args[0] if args else node.kwargs.get("dim0")
            c = args[1] if len(args) > 1 else node.kwargs.get("dim1")
            a, c = a % nd, c % nd
            d = c if d == a else a if d == c else d
        elif name == "t":
            d = (1 - d) if nd == 2 else d
        elif name == "permute":
            order = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
            order = [o % nd for o in order]
            d = order.index(d)
        elif name == "movedim":
            s = args[0] if args else node.kwargs.get("source")
            t_ = args[1] if len(args) > 1 else node.kwargs.get("destination")
            if not isinstance(s, int):
                self.unsupported("movedim of several axes")
            order = list(range(nd))
            order.remove(s % nd)
            order.insert(t_ % nd, s % nd)
            d = order.index(d)
        elif name == "unsqueeze":
            a = args[0] if args else node.kwargs.get("dim")
            a = a % (nd + 1)
            d = d + 1 if a <= d else d
        elif name == "squeeze":
            in_shape = self.shape(node.args[0])
            if in_shape is None:
                self.unsupported("squeeze (shapes unknown)")
            dims = args[0] if args else node.kwargs.get("dim")
            dims = [i for i, s in enumerate(in_shape) if s == 1] if dims is None else \
                ([dims] if isinstance(dims, int) else list(dims))
            dims = [x % nd for x in dims if in_shape[x % nd] == 1]
            if d in dims:
                self.b.fix(src.cls)
                return None
            d = d - sum(1 for x in dims if x < d)
        return T(src.cls, d, src.inner, out_nd)

    def getitem(self, base, idx):
        if isinstance(base, (tuple, list)):
            if isinstance(idx, int):
                return base[idx]
            return base
        if isinstance(base, Same):
            return base.t if isinstance(idx, int) else base
        if not isinstance(base, T):
            return None  # indexing a tensor without a permuted axis (or a non-tensor)
        nd = base.ndim
        if nd is None:
            self.unsupported("indexing a permuted tensor (shapes unknown: pass an example batch)")
        idx = idx if isinstance(idx, tuple) else (idx,)
        if any(isinstance(i, torch.fx.Node) for i in idx):
            tensor_idx = [k for k, i in enumerate(idx) if isinstance(i, torch.fx.Node)]
            if len(tensor_idx) > 1:
                self.unsupported("advanced indexing of a permuted tensor")
        n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
        expanded = []
        for i in idx:
            if i is Ellipsis:
                expanded += [slice(None)] * (nd - n_real)
            else:
                expanded.append(i)
        expanded += [slice(None)] * (nd - sum(1 for i in expanded if i is not None))
        in_d = out_d = 0
        for i in expanded:
            if i is None:
                out_d += 1
                continue
            if in_d == base.dim:
                if isinstance(i, slice) and i == slice(None):
                    out = self.shape()
                    return T(base.cls, out_d, base.inner, len(out) if out is not None else None)
                self.b.fix(base.cls)  # selecting particular units: they must stay where they are
                return None if isinstance(i, int) else T(FIXED, out_d, base.inner, None)
            if not isinstance(i, int):
                out_d += 1
            in_d += 1
        self.unsupported("indexing a permuted tensor")

    def split(self, src: T, name: str, node):
        if not isinstance(src, T):
            self.unsupported(f"'{name}' of a permuted tensor given in an unusual position")
        dim = self._dim_arg(node, 2 if name in ("split", "chunk", "tensor_split", "split_with_sizes") else 1,
                            "dim", 0)
        nd = src.ndim
        if nd is None:
            self.unsupported(f"'{name}' (shapes unknown: pass an example batch)")
        dim %= nd
        if dim == src.dim:
            self.unsupported(f"'{name}' along the permuted axis")
        if name == "unbind":
            return Same(T(src.cls, src.dim - (1 if dim < src.dim else 0), src.inner, nd - 1))
        return Same(T(src.cls, src.dim, src.inner, nd))

    def cat(self, node, name):
        b = self.b
        seq = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = self._dim_arg(node, 1, "dim", 0)
        vals = [self.v(a) for a in seq]
        ts = [v for v in vals if isinstance(v, T)]
        out = self.shape()
        nd = len(out) if out is not None else None
        if nd is None:
            self.unsupported(f"'{name}' of permuted tensors (shapes unknown: pass an example batch)")
        src = ts[0]
        if name == "stack":
            dim %= nd
            pos = src.dim + (1 if dim <= src.dim else 0)
        else:
            dim %= nd
            pos = src.dim
            if dim == pos:
                self.unsupported(f"'{name}' along the permuted axis")
        cls = src.cls
        for t in ts[1:]:
            if t.dim != src.dim or t.inner != src.inner:
                self.unsupported(f"'{name}' of tensors whose permuted axes do not line up")
            cls = b.join(cls, t.cls)
        if len(ts) != len(vals):  # a tensor without the permutation joins one with it
            b.fix(cls)
            cls = FIXED
        return T(cls, pos, src.inner, nd)


# --- recording values for activation matching ---------------------------------------------------
@torch.no_grad()
def record_values(model: nn.Module, batch, probes, forward=None) -> dict:
    """{(kind, name): value} at the probes for one batch, model in eval mode."""
    fwd = criterion(forward=forward).forward
    out: dict = {}
    mods = dict(model.named_modules())
    node_names = {p.name for p in probes if p.kind == "node"}
    handles = []
    for p in probes:
        if p.kind == "module" and ("module", p.name) not in out:
            handles.append(mods[p.name].register_forward_hook(
                lambda m, i, o, n=p.name: out.__setitem__(("module", n), o)))
        elif p.kind == "module_in":
            handles.append(mods[p.name].register_forward_pre_hook(
                lambda m, i, n=p.name: out.__setitem__(("module_in", n), i[0])))
        elif p.kind == "mha_proj" and ("mha_proj", p.name) not in out:
            out[("mha_proj", p.name)] = None

            def proj(m, args, kwargs, n=p.name):
                q = args[0] if args else kwargs["query"]
                out[("mha_proj", n)] = torch.nn.functional.linear(q, m.in_proj_weight, m.in_proj_bias)

            handles.append(mods[p.name].register_forward_pre_hook(proj, with_kwargs=True))
    needs_grad = any(p.kind in ("module_in", "mha_proj") for p in probes)  # nn.Transformer* fast paths skip the modules
    modes = _keep_modes(model)
    try:
        model.eval()
        target = model
        if node_names:
            target = _GraphCall(traced(model),
                                lambda n, v: out.__setitem__(("node", n.name), v) if n.name in node_names else None)
        with torch.set_grad_enabled(needs_grad):
            fwd(target, batch)
    finally:
        for h in handles:
            h.remove()
        _restore(modes)
    return {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}


__all__ = ["Builder", "derive", "example_batch", "record_values", "traced"]
