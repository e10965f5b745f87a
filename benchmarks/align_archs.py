"""Benchmark: alignment and REPAIR on the architectures users bring.

For each architecture two copies are trained from different initialisation seeds (same
data, same order) and the straight line between them is evaluated on held-out data:
naive, aligned by weight matching, aligned + REPAIR, aligned by activation matching
(post-activation features, and all features). A randomly permuted copy of the first
network, aligned back by weight matching, gives the sanity number (should be ~0).

Tasks (small, CPU):
* image models on Fashion-MNIST (10 000 training images, 2 000 test images, 5 epochs):
  a shared hidden layer, an input-standardising prefix, GroupNorm and LayerNorm CNNs, and
  a two-input MLP (top and bottom halves of the image as two inputs);
* token models on a synthetic task (vocabulary 30, 12 tokens, 6 000 / 2 000 sequences):
  the label is which of three token ranges occurs most often (1-9, 10-19, 20-29), or for
  the tied-embedding LM the most frequent token itself; an Embedding + LayerNorm model,
  the tied LM, two nn.TransformerEncoderLayer blocks and a tiny HF BERT (2 layers, 4
  heads, hidden 32) trained from scratch from two seeds (no pretrained weights here);
  `bert-finetuned`: one tiny BERT trained 10 epochs on that task ("pretrained"), then
  fine-tuned twice for 5 epochs on a second task (which token range occurs least often)
  with a new classifier and data order from seeds 0 and 1.

Prints one JSON line per architecture; --markdown FILE also writes the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class SharedLayer(nn.Module):
    def __init__(self, d_in=784, h=128, classes=10):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(d_in, h), nn.Linear(h, h), nn.Linear(h, classes)

    def forward(self, x):
        h = torch.relu(self.fc1(x.flatten(1)))
        h = torch.relu(self.fc2(h))
        return self.fc3(torch.relu(self.fc2(h)))


class Standardised(nn.Module):
    def __init__(self, d_in=784, h=128, classes=10):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(d_in, h), nn.Linear(h, h), nn.Linear(h, classes)

    def forward(self, x):
        x = x.flatten(1)
        x = (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-5)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class GroupNormCNN(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(16, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Flatten(), nn.Linear(32 * 7 * 7, classes))

    def forward(self, x):
        return self.net(x)


class LayerNormCNN(nn.Module):
    def __init__(self, c=32, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1, stride=2)
        self.ln1 = nn.LayerNorm(c)
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.ln2 = nn.LayerNorm(c)
        self.head = nn.Linear(c, classes)

    def forward(self, x):
        h = self.ln1(self.stem(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        h = h + F.gelu(self.conv(h))
        return self.head(self.ln2(h.permute(0, 2, 3, 1)).mean((1, 2)))


class TwoInput(nn.Module):
    def __init__(self, h=128, classes=10):
        super().__init__()
        self.a, self.b = nn.Linear(392, h), nn.Linear(392, h)
        self.hidden, self.head = nn.Linear(h, h), nn.Linear(h, classes)

    def forward(self, top, bottom):
        h = F.relu(self.a(top) + self.b(bottom))
        return self.head(F.relu(self.hidden(h)))


class EmbeddingModel(nn.Module):
    def __init__(self, vocab=30, dim=32, h=64, classes=3):
        super().__init__()
        self.emb, self.norm = nn.Embedding(vocab, dim), nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, h), nn.Linear(h, classes)

    def forward(self, tokens):
        return self.fc2(F.relu(self.fc1(self.norm(self.emb(tokens)).mean(1))))


class TiedLM(nn.Module):
    def __init__(self, vocab=30, dim=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, tokens):
        return self.out(torch.tanh(self.mix(self.emb(tokens).mean(1))))


class Encoder(nn.Module):
    def __init__(self, vocab=30, dim=32, heads=4, ff=64, layers=2, classes=3, length=12):
        super().__init__()
        self.emb, self.pos = nn.Embedding(vocab, dim), nn.Embedding(length, dim)
        self.layers = nn.ModuleList([nn.TransformerEncoderLayer(dim, heads, ff, dropout=0.0, batch_first=True)
                                     for _ in range(layers)])
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens):
        h = self.emb(tokens) + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
        for layer in self.layers:
            h = layer(h)
        return self.head(h.mean(1))


def bert(seed):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=16, num_labels=3,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg)


ARCHS = {  # name: (builder(seed), task, loss, epochs, lr)
    "shared": (SharedLayer, "fashion", "cross_entropy", 5, 1e-3),
    "tied": (TiedLM, "tokens-mode", "cross_entropy", 10, 3e-3),
    "standardised": (Standardised, "fashion", "cross_entropy", 5, 1e-3),
    "groupnorm": (GroupNormCNN, "fashion", "cross_entropy", 5, 1e-3),
    "layernorm": (LayerNormCNN, "fashion", "cross_entropy", 5, 1e-3),
    "embedding": (EmbeddingModel, "tokens", "cross_entropy", 10, 3e-3),
    "two-input": (TwoInput, "fashion-halves", "cross_entropy", 5, 1e-3),
    "encoder": (Encoder, "tokens", "cross_entropy", 10, 1e-3),
    "bert": (None, "tokens-dict", "model", 10, 1e-3),
    "bert-finetuned": (None, "tokens-least-dict", "model", 5, 1e-3),
}


def tokens(n, seed, mode=False, least=False):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(1, 30, (n, 12), generator=g)
    if mode:
        counts = F.one_hot(t, 30).sum(1).float() + torch.arange(30) * 1e-3  # ties: the larger token
        return t, counts.argmax(1)
    counts = torch.stack([((t >= lo) & (t < hi)).sum(1) for lo, hi in ((1, 10), (10, 20), (20, 30))], 1)
    if least:
        return t, (counts.float() + torch.arange(3) * 1e-3).argmin(1)
    return t, (counts.float() - torch.arange(3) * 1e-3).argmax(1)


def task_data(task: str):
    if task.startswith("fashion"):
        from lossprobe.data import fashion_mnist

        ds = fashion_mnist()
        tr, te = ds.train.subset(10_000, seed=0), ds.test.subset(2000, seed=1)
        if task == "fashion-halves":
            def halves(s):
                x = s.x.flatten(1)
                return (x[:, :392], x[:, 392:], s.y)
            return halves(tr), halves(te)
        return (tr.x, tr.y), (te.x, te.y)
    least = task.startswith("tokens-least")
    tr, te = tokens(6000, 0, task == "tokens-mode", least), tokens(2000, 1, task == "tokens-mode", least)
    if task.endswith("-dict"):
        def d(p):
            return {"input_ids": p[0], "attention_mask": torch.ones_like(p[0]), "labels": p[1]}
        return d(tr), d(te)
    return tr, te


def run_arch(name: str, alphas: np.ndarray) -> dict:
    from lossprobe.connectivity.alignment.matching import align, permutation_spec, random_permutation
    from lossprobe.core.batching import as_data
    from lossprobe.connectivity.paths import interpolate
    from lossprobe.connectivity.repair import Repairer, interpolate_repaired
    from lossprobe.training.loop import TrainConfig, evaluate_model, fit

    builder, task, loss, epochs, lr = ARCHS[name]
    train, test = task_data(task)
    calib = as_data(train, "calibration").subset(2000, seed=4)
    t0 = time.perf_counter()
    models = []
    if name == "bert-finetuned":  # one "pretrained" BERT (10 epochs on the majority task), fine-tuned twice
        import copy

        pre = bert(42)
        fit(pre, task_data("tokens-dict")[0], None, TrainConfig(optimizer="adam", lr=1e-3, epochs=10, batch_size=128),
            loss="model")
    for seed in (0, 1):
        data_seed = 0
        if name == "bert":
            m = bert(seed)
        elif name == "bert-finetuned":  # new classifier from `seed`, data order from `seed`
            m = copy.deepcopy(pre)
            torch.manual_seed(seed)
            m.classifier.reset_parameters()
            data_seed = seed
        else:
            torch.manual_seed(seed)
            m = builder()
        fit(m, train, None, TrainConfig(optimizer="adam", lr=lr, epochs=epochs, batch_size=128, data_seed=data_seed),
            loss=loss)
        models.append(m.eval())
    t_train = time.perf_counter() - t0
    a, b = models
    spec = permutation_spec(a, example=calib)
    splits = {"test": test}
    out = {"arch": name, "task": task, "spec": spec.structure,
           "groups": spec.sizes(a.state_dict()), "endpoint_test_accuracy": [evaluate_model(m, test, loss)[1] for m in models]}
    perm, _ = random_permutation(a, seed=5, spec=spec)
    back = align(a, perm, spec=spec, data=calib)
    paths = {"permuted_copy_aligned": interpolate(a, back, splits, alphas=alphas, loss=loss)}
    paths["naive"] = interpolate(a, b, splits, alphas=alphas, loss=loss)
    al = align(a, b, method="weights", spec=spec, data=calib)
    paths["aligned"] = interpolate(a, al, splits, alphas=alphas, loss=loss)
    paths["aligned_repair"] = interpolate_repaired(a, al, splits, calib, alphas=alphas, loss=loss,
                                                   repairer=Repairer(a, al, calib, spec=spec))
    for feat in ("post", "all"):
        act = align(a, b, method="activations", spec=spec, data=calib, features=feat)
        paths[f"activations_{feat}"] = interpolate(a, act, splits, alphas=alphas, loss=loss)
    mid = int(np.flatnonzero(np.isclose(alphas, 0.5))[0])
    out["loss_barrier"] = {k: round(float(it.loss_barrier("test")), 4) for k, it in paths.items()}
    out["error_barrier"] = {k: round(float(it.error_barrier("test")), 4) for k, it in paths.items()}
    out["midpoint_accuracy"] = {k: round(float(it.accuracy["test"][mid]), 4) for k, it in paths.items()}
    out["seconds"] = {"training": round(t_train, 1), "total": round(time.perf_counter() - t0, 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("archs", nargs="*", default=[a for a in ARCHS if a != "bert-finetuned"],
                    help=f"architectures (default: all of {list(ARCHS)} but bert-finetuned)")
    ap.add_argument("--markdown", metavar="FILE", help="also write the results as a Markdown table")
    args = ap.parse_args()
    torch.set_num_threads(1)
    alphas = np.linspace(0, 1, 11)
    rows = []
    for name in args.archs:
        r = run_arch(name, alphas)
        rows.append(r)
        print(json.dumps(r), flush=True)
    if args.markdown:
        keys = ["permuted_copy_aligned", "naive", "aligned", "aligned_repair", "activations_post", "activations_all"]
        lines = ["| architecture | task | endpoint acc | " + " | ".join(keys) + " |", "|---" * (3 + len(keys)) + "|"]
        for r in rows:
            acc = sum(r["endpoint_test_accuracy"]) / 2
            lines.append(f"| {r['arch']} | {r['task']} | {acc:.1%} | " + " | ".join(
                f"{r['loss_barrier'][k]:.3f} / {r['error_barrier'][k]:.1%}" for k in keys) + " |")
        with open(args.markdown, "w") as f:
            f.write("loss barrier / error barrier on test data\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
