"""The tracker inside PyTorch Lightning and the HuggingFace Trainer: a few steps on a tiny model,
the values logged, the state saved with the checkpoint and resumed."""

import warnings

import pytest
import torch
from torch import nn


def _blobs(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return x, (x[:, 0] > 0).long()


def test_lightning_callback_logs_and_resumes(tmp_path, one_thread):
    pl = pytest.importorskip("pytorch_lightning")
    from lossprobe.track.lightning import TrackerCallback

    x, y = _blobs()

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, i):
            xb, yb = batch
            return nn.functional.cross_entropy(self(xb), yb)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.01)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    kw = dict(every=2, probes=("lambda_max", "grad_norm", "preconditioned_lambda_max"))

    def trainer(steps, cb):
        return pl.Trainer(max_steps=steps, callbacks=[cb], logger=pl.loggers.CSVLogger(tmp_path / "logs"),
                          enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                          default_root_dir=tmp_path, log_every_n_steps=1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cb = TrackerCallback((x, y), **kw)
        t = trainer(6, cb)
        t.fit(Module(), loader)
        h = cb.tracker.history
        assert list(h["step"]) == [0, 2, 4, 6]
        assert "lossprobe/lambda_max" in t.logged_metrics and "lossprobe/preconditioned_lambda_max" in t.logged_metrics
        ckpt = tmp_path / "six.ckpt"
        t.save_checkpoint(ckpt)
        state = torch.load(ckpt, weights_only=False)["callbacks"]
        assert any(len(v.get("records", [])) == 4 for v in state.values())
        cb2 = TrackerCallback((x, y), **kw)
        trainer(10, cb2).fit(Module(), loader, ckpt_path=ckpt)
    h2 = cb2.tracker.history
    assert list(h2["step"]) == [0, 2, 4, 6, 8, 10]
    assert (h2["lambda_max"][:4] == h["lambda_max"]).all()


def test_hf_trainer_callback_logs_through_on_log_and_resumes(tmp_path, one_thread):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from lossprobe.track.hf import STATE_FILE, attach

    cfg = transformers.GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 32, (24, 12), generator=g)
    rows = [{"input_ids": r, "labels": r} for r in ids]
    probe = {"input_ids": ids[:8], "labels": ids[:8]}
    seen = []

    class Recorder(transformers.TrainerCallback):  # stands for a report_to integration
        def on_log(self, args, state, control, logs=None, **kw):
            seen.append(dict(logs))

    def run(steps, resume=None):
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(cfg)
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / "hf"), max_steps=steps, per_device_train_batch_size=4, learning_rate=1e-3,
            logging_steps=100, save_steps=2, report_to=[], disable_tqdm=True, use_cpu=True, seed=0)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, callbacks=[Recorder()])
        cb = attach(trainer, probe, every=2, probes=("lambda_max", "grad_norm"))
        trainer.train(resume_from_checkpoint=resume)
        return trainer, cb

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer, cb = run(4)
        assert list(cb.tracker.history["step"]) == [0, 2, 4]
        logged = [e for e in trainer.state.log_history if "lossprobe/lambda_max" in e]
        assert [e["step"] for e in logged] == [2, 4]
        assert [e for e in seen if "lossprobe/lambda_max" in e], "a later callback (report_to) saw no values"
        assert (tmp_path / "hf" / "checkpoint-2" / STATE_FILE).is_file()
        _, cb2 = run(6, resume=str(tmp_path / "hf" / "checkpoint-4"))
    h, h2 = cb.tracker.history, cb2.tracker.history
    assert list(h2["step"]) == [0, 2, 4, 6]
    assert (h2["lambda_max"][:3] == h["lambda_max"]).all()
