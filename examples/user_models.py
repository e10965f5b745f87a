"""Models as a user brings them, for the README's "Your own model and data" and "Tune your own
model" examples (`python examples/user_models.py` writes their data files into runs/own).

    lossprobe hessian runs/own/bert/model.safetensors --model examples/user_models.py:bert ...
    lossprobe surface runs/own/reg.safetensors --model examples/user_models.py:regressor ...
    lossprobe search --space examples/space_regression.toml --model examples/user_models.py:regressor ...
    lossprobe search --space examples/space_bert.toml --model examples/user_models.py:bert ...
"""

import torch
from torch import nn


def bert(num_labels: int = 3, dropout: float = 0.1):
    """A small BERT classifier built from a config (no download); swap in from_pretrained(DIR).
    `dropout` is the hidden and attention dropout (BERT's default 0.1)."""
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=64, num_labels=num_labels,
                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return BertForSequenceClassification(cfg)


def regressor(inputs: int = 8, width: int = 64, outputs: int = 1):
    """A plain MLP regressor with its own input standardisation."""
    return nn.Sequential(nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, outputs))


def huber(output, target, delta: float = 1.0):
    """A loss of your own: per-sample losses [B] (what lossprobe sums and divides by the count)."""
    return torch.nn.functional.huber_loss(output, target, delta=delta, reduction="none").mean(1)


def topics(n: int, seed: int, length: int = 32, vocab: int = 1000, classes: int = 3, keywords: int = 50,
           share: float = 0.3) -> dict:
    """Tokenised 'documents' whose label is their topic: a `share` of a document's tokens are
    keywords of its topic (one of `keywords` ids of the topic's part of the vocabulary), the rest
    any token; padded to `length` (a task a small BERT learns in a few epochs)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    topical = labels[:, None] * (vocab // classes) + torch.randint(0, keywords, (n, length), generator=g)
    anywhere = torch.randint(0, vocab, (n, length), generator=g)
    ids = torch.where(torch.rand(n, length, generator=g) < share, topical, anywhere)
    mask = torch.ones_like(ids)
    lengths = torch.randint(length // 2, length + 1, (n,), generator=g)
    mask[torch.arange(length)[None, :] >= lengths[:, None]] = 0  # padding
    return {"input_ids": ids * mask, "attention_mask": mask, "labels": labels}


def make_files(out: str = "runs/own") -> None:
    """Write what the README's examples read: a tokenised data file and a BERT checkpoint
    (save_pretrained), a regression table (.npz) and a trained regressor; for the searches, a
    held-out regression table and tokenised topic data (dict batches) for training and test."""
    from pathlib import Path

    import numpy as np

    import lossprobe as lp

    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (256, 32), generator=g)
    mask = torch.ones_like(ids)
    mask[::2, 20:] = 0  # padding
    labels = ids[:, 0] % 3
    torch.save({"input_ids": ids, "attention_mask": mask, "labels": labels}, d / "val.pt")
    torch.manual_seed(0)
    model = bert()
    lp.fit(model, {"input_ids": ids, "attention_mask": mask, "labels": labels}, None,
           lp.TrainConfig(epochs=2, batch_size=32, lr=1e-3), loss="model")
    model.save_pretrained(d / "bert")  # model.safetensors without the tied copies
    x = torch.randn(2000, 8, generator=g)
    y = (x[:, :1] * 2 - x[:, 1:2] ** 2 + 0.1 * torch.randn(2000, 1, generator=g))
    np.savez(d / "housing.npz", features=x.numpy(), price=y.numpy())
    torch.manual_seed(0)
    reg = regressor()
    lp.fit(reg, (x, y), None, lp.TrainConfig(epochs=20, batch_size=64, lr=3e-3), loss="mse")
    lp.save_checkpoint(reg, d / "reg.safetensors")
    # for "Tune your own model": a test table drawn like housing.npz, and topic documents
    xt = torch.randn(500, 8, generator=g)
    yt = (xt[:, :1] * 2 - xt[:, 1:2] ** 2 + 0.1 * torch.randn(500, 1, generator=g))
    np.savez(d / "housing-test.npz", features=xt.numpy(), price=yt.numpy())
    torch.save(topics(1024, seed=1), d / "topics-train.pt")
    torch.save(topics(512, seed=2), d / "topics-test.pt")


if __name__ == "__main__":
    make_files()
