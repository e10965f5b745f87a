"""Models for the alignment tests: each architecture that alignment must handle, small."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# the same tiny models as the compatibility matrix's (tied embedding, GroupNorm CNN)
from compat_models import GroupNormCNN, TiedLM  # noqa: F401


class SharedLayer(nn.Module):
    """One hidden Linear applied twice (a module called more than once)."""

    def __init__(self, d_in=6, h=10, classes=3):
        super().__init__()
        self.fc1 = nn.Linear(d_in, h)
        self.fc2 = nn.Linear(h, h)
        self.fc3 = nn.Linear(h, classes)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        h = torch.relu(self.fc2(h))
        h = torch.relu(self.fc2(h))
        return self.fc3(h)


class Standardised(nn.Module):
    """Standardises its raw input inside forward, before any permuted layer."""

    def __init__(self, d_in=6, h=10, classes=3):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(d_in, h), nn.Linear(h, h), nn.Linear(h, classes)

    def forward(self, x):
        x = (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-5)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class LayerNormCNN(nn.Module):
    """Conv layers with LayerNorm over channels (channels-last, as ConvNeXt does) and a residual."""

    def __init__(self, c=8, classes=4):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.ln1 = nn.LayerNorm(c)
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.ln2 = nn.LayerNorm(c)
        self.head = nn.Linear(c, classes)

    def forward(self, x):
        h = self.ln1(self.stem(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        h = h + F.gelu(self.conv(h))
        h = self.ln2(h.permute(0, 2, 3, 1))
        return self.head(h.mean((1, 2)))


class EmbeddingModel(nn.Module):
    """Embedding, LayerNorm, mean over tokens, MLP."""

    def __init__(self, vocab=30, dim=12, h=16, classes=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, h)
        self.fc2 = nn.Linear(h, classes)

    def forward(self, tokens):
        e = self.norm(self.emb(tokens))
        return self.fc2(F.relu(self.fc1(e.mean(1))))


class TwoInput(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.a = nn.Linear(6, 10)
        self.b = nn.Linear(4, 10)
        self.hidden = nn.Linear(10, 10)
        self.head = nn.Linear(10, classes)

    def forward(self, x1, x2):
        h = torch.tanh(self.a(x1) + self.b(x2))
        return self.head(F.relu(self.hidden(h)))


class Encoder(nn.Module):
    """Token embedding + learned positions, two nn.TransformerEncoderLayer, mean pooling."""

    def __init__(self, vocab=30, dim=16, heads=4, ff=32, layers=2, classes=3, length=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        self.layers = nn.ModuleList([nn.TransformerEncoderLayer(dim, heads, ff, dropout=0.0, batch_first=True)
                                     for _ in range(layers)])
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens):
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        h = self.emb(tokens) + self.pos(pos)
        for layer in self.layers:
            h = layer(h)
        return self.head(h.mean(1))


def tiny_bert(seed=0, layers=1, hidden=16, heads=2, intermediate=32, labels=3, vocab=30, init=0.5):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=intermediate, max_position_embeddings=32, num_labels=labels,
                     initializer_range=init, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg).eval()


def tiny_gpt2(seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=30, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0,
                     initializer_range=0.2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg).eval()


def data_for(name: str, n: int = 64, seed: int = 0):
    """A batch of inputs and labels for each architecture (tuple or dict batch)."""
    g = torch.Generator().manual_seed(seed)
    if name in ("shared", "standardised"):
        return (torch.randn(n, 6, generator=g) * 3 + 1, torch.randint(0, 3, (n,), generator=g))
    if name == "tied":
        return (torch.randint(0, 20, (n, 6), generator=g), torch.randint(0, 20, (n,), generator=g))
    if name in ("groupnorm", "layernorm"):
        return (torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g))
    if name in ("embedding", "encoder"):
        return (torch.randint(0, 30, (n, 8), generator=g), torch.randint(0, 3, (n,), generator=g))
    if name == "two-input":
        return (torch.randn(n, 6, generator=g), torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g))
    if name in ("bert", "gpt2"):
        ids = torch.randint(0, 30, (n, 8), generator=g)
        mask = torch.ones(n, 8, dtype=torch.long)
        mask[::3, 5:] = 0
        if name == "bert":
            return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 3, (n,), generator=g)}
        lab = ids.clone()
        lab[mask == 0] = -100
        return {"input_ids": ids, "attention_mask": mask, "labels": lab}
    raise KeyError(name)


BUILDERS = {
    "shared": SharedLayer, "tied": TiedLM, "standardised": Standardised, "groupnorm": GroupNormCNN,
    "layernorm": LayerNormCNN, "embedding": EmbeddingModel, "two-input": TwoInput, "encoder": Encoder,
    "bert": tiny_bert, "gpt2": tiny_gpt2,
}
LOSS = {"bert": "model", "gpt2": "model"}


def build(name: str, seed: int = 0) -> nn.Module:
    if name in ("bert", "gpt2"):
        return BUILDERS[name](seed)
    torch.manual_seed(seed)
    return BUILDERS[name]().eval()
