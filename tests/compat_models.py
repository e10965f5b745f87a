"""The user-style models of the compatibility matrix, each with its data and a hand-written loss.

Every case gives: a model builder (seeded), in-memory data, the keywords lossprobe takes
(loss=, forward=), a batch size smaller than the data (so batching matters), and
`hand_loss(model)`: the loss written the obvious way over all the data at once, the
reference every probe's numbers are checked against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(c)
        self.c2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.b2(self.c2(F.relu(self.b1(self.c1(x))))))


class SmallResNet(nn.Module):
    """Conv stem, two residual blocks with BatchNorm, global pooling, linear head."""

    def __init__(self, c=8, classes=4):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.blocks = nn.Sequential(Block(c), Block(c))
        self.head = nn.Linear(c, classes)

    def forward(self, x):
        x = self.blocks(F.relu(self.bn(self.stem(x))))
        return self.head(x.mean((2, 3)))


class LSTMClassifier(nn.Module):
    def __init__(self, features=5, hidden=12, classes=3):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


class GroupNormCNN(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(8 * 4 * 4, classes))

    def forward(self, x):
        return self.net(x)


class TiedLM(nn.Module):
    """Token classifier whose output layer shares the embedding matrix (tied weights)."""

    def __init__(self, vocab=20, dim=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, tokens):
        return self.out(torch.tanh(self.mix(self.emb(tokens).mean(1))))


class TwoInput(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.a = nn.Linear(6, 10)
        self.b = nn.Linear(4, 10)
        self.head = nn.Linear(10, classes)

    def forward(self, x1, x2):
        return self.head(torch.tanh(self.a(x1) + self.b(x2)))


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))

    def forward(self, x):
        return self.net(x)


@dataclass
class Case:
    name: str
    build: Callable[[int], nn.Module]
    data: object
    hand_loss: Callable  # (model, params=None) -> 0-d tensor, differentiable in params
    kwargs: dict = field(default_factory=dict)
    batch_size: int = 5


def _seeded(fn):
    def build(seed):
        torch.manual_seed(seed)
        return fn().eval()
    return build


def call(model, params, *args, **kwargs):
    """The model called with `params` in place of its own (all of its own when None)."""
    return torch.func.functional_call(model, params or {}, args, kwargs)


def _ce_hand(x, y):
    def loss(model, params=None):
        return F.cross_entropy(call(model, params, x), y)
    return loss


def cases() -> list[Case]:
    g = torch.Generator().manual_seed(0)
    out = []
    x = torch.randn(12, 3, 8, 8, generator=g)
    y = torch.randint(0, 4, (12,), generator=g)
    out.append(Case("resnet", _seeded(SmallResNet), (x, y), _ce_hand(x, y)))

    x = torch.randn(12, 7, 5, generator=g)
    y = torch.randint(0, 3, (12,), generator=g)
    out.append(Case("lstm", _seeded(LSTMClassifier), (x, y), _ce_hand(x, y)))

    x = torch.randn(12, 1, 8, 8, generator=g)
    y = torch.randint(0, 4, (12,), generator=g)
    out.append(Case("groupnorm", _seeded(GroupNormCNN), (x, y), _ce_hand(x, y)))

    t = torch.randint(0, 20, (12, 6), generator=g)
    y = torch.randint(0, 20, (12,), generator=g)
    out.append(Case("tied", _seeded(TiedLM), (t, y), _ce_hand(t, y)))

    x1, x2 = torch.randn(12, 6, generator=g), torch.randn(12, 4, generator=g)
    y = torch.randint(0, 3, (12,), generator=g)

    def two_hand(model, params=None, x1=x1, x2=x2, y=y):
        return F.cross_entropy(call(model, params, x1, x2), y)
    out.append(Case("two-input", _seeded(TwoInput), (x1, x2, y), two_hand))

    x = torch.randn(12, 4, generator=g)
    y = torch.randn(12, 2, generator=g)

    def mse_hand(model, params=None, x=x, y=y):
        return nn.MSELoss()(call(model, params, x), y)
    out.append(Case("regression", _seeded(Regressor), (x, y), mse_hand, {"loss": "mse"}))

    try:
        import transformers  # noqa: F401
    except ImportError:
        return out
    out += _hf_cases(g)
    return out


def tiny_bert(seed=0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=16, num_labels=3,
                     initializer_range=0.5)
    return BertForSequenceClassification(cfg).eval()


def tiny_gpt2(seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=30, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0,
                     initializer_range=0.2)
    return GPT2LMHeadModel(cfg).eval()


def _hf_cases(g):
    out = []
    ids = torch.randint(0, 30, (12, 8), generator=g)
    mask = torch.ones(12, 8, dtype=torch.long)
    mask[::3, 5:] = 0  # padded sequences: the attention mask matters
    labels = torch.randint(0, 3, (12,), generator=g)
    bert_data = {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def bert_hand(model, params=None):
        return call(model, params, **bert_data).loss  # one batch: the model's own mean over all the data
    out.append(Case("hf-bert", tiny_bert, bert_data, bert_hand, {"loss": "model"}))

    lab = ids.clone()
    lab[mask == 0] = -100
    gpt_data = {"input_ids": ids, "attention_mask": mask, "labels": lab}

    def gpt_hand(model, params=None):
        return call(model, params, **gpt_data).loss  # token-weighted mean over all non-ignored next tokens
    out.append(Case("hf-gpt2", tiny_gpt2, gpt_data, gpt_hand, {"loss": "model"}))
    return out
