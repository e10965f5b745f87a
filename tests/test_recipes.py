"""Training recipes: warmup and one-cycle schedules, image augmentation; seeded and resumable."""

import math

import pytest
import torch

from lossprobe.errors import UserError
from lossprobe.models import build
from lossprobe.training.loop import TrainConfig, augment_images, fit, lr_factor


def _factors(cfg, total, spe):
    return [lr_factor(cfg, s, total, spe) for s in range(total)]


def test_schedules_with_warmup():
    spe, epochs = 10, 5
    total = spe * epochs
    f = _factors(TrainConfig(epochs=epochs, schedule="cosine", warmup_epochs=1), total, spe)
    assert f[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])  # linear up to the peak
    assert f[10] == pytest.approx(1.0) and f[-1] < 0.01 and all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[30] == pytest.approx(0.5 * (1 + math.cos(math.pi * 20 / 40)))
    lin = _factors(TrainConfig(epochs=epochs, schedule="linear", warmup_epochs=0.5), total, spe)
    assert lin[4] == pytest.approx(1.0) and lin[5] == pytest.approx(1.0) and lin[-1] == pytest.approx(1 / 45)
    one = _factors(TrainConfig(epochs=epochs, schedule="onecycle"), total, spe)  # a triangle, peak after 25%
    w = round(0.25 * total)
    assert one[w - 1] == pytest.approx(1.0) and max(one) == pytest.approx(1.0) and one[0] < 0.1 and one[-1] < 0.05
    assert all(a <= b for a, b in zip(one[:w - 1], one[1:w])) and all(a >= b for a, b in zip(one[w:], one[w + 1:]))
    # without warmup, cosine is what it always was
    plain = _factors(TrainConfig(epochs=epochs), total, spe)
    assert plain[0] == 1.0 and plain[25] == pytest.approx(0.5)
    with pytest.raises(UserError, match="warmup_epochs"):
        TrainConfig(epochs=2, warmup_epochs=2)
    with pytest.raises(UserError, match="augment"):
        TrainConfig(augment="rotate")


def test_augmentation_is_seeded_and_does_what_it_says():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).reshape(2, 1, 5, 5)
    flip = TrainConfig(augment="flip")
    a = augment_images(x, flip, torch.Generator().manual_seed(3))
    b = augment_images(x, flip, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    for i in range(2):
        assert torch.equal(a[i], x[i]) or torch.equal(a[i], x[i].flip(-1))
    crop = TrainConfig(augment="crop", crop_padding=1)
    many = torch.zeros(64, 1, 5, 5)
    many[:, :, 2, 2] = 1.0  # one lit pixel: a shift moves it by at most one row and column
    out = augment_images(many, crop, torch.Generator().manual_seed(0))
    pos = out[:, 0].flatten(1).argmax(1)
    rows, cols = pos // 5, pos % 5
    assert set(rows.tolist()) == {1, 2, 3} and set(cols.tolist()) == {1, 2, 3}
    assert torch.equal(out.sum((1, 2, 3)), torch.ones(64))
    flat = augment_images(torch.zeros(3, 5, 5), TrainConfig(augment="crop+flip"), torch.Generator())
    assert flat.shape == (3, 5, 5)
    with pytest.raises(UserError, match="image inputs"):
        augment_images(torch.zeros(3, 25), crop, torch.Generator())


def _images(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_warmup_and_augmentation_resume_identically(tmp_path, monkeypatch, one_thread):
    data = _images()
    cfg = TrainConfig(optimizer="momentum", lr=0.05, epochs=3, batch_size=16, schedule="onecycle",
                      warmup_epochs=1, augment="crop+flip", crop_padding=1, weight_decay=5e-4)
    ref, ref_steps = build("mlp:36-16-3", seed=0), []
    h_ref = fit(ref, data, data, cfg, on_step=lambda s: ref_steps.append((s.epoch, s.step)))
    assert h_ref.lr[1] == pytest.approx(0.05 * lr_factor(cfg, 5, 18, 6))
    again = build("mlp:36-16-3", seed=0)
    fit(again, data, data, cfg)
    for p, q in zip(ref.parameters(), again.parameters()):
        assert torch.equal(p, q)  # seeded: the same run twice gives the same weights
    import lossprobe.training.loop as tr

    real, calls = tr.evaluate_model, {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 6:  # during epoch 2's evaluation: resumes after epoch 1
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(tr, "evaluate_model", flaky)
    m = build("mlp:36-16-3", seed=0)
    with pytest.raises(KeyboardInterrupt):
        fit(m, data, data, cfg, checkpoint_dir=tmp_path)
    monkeypatch.setattr(tr, "evaluate_model", real)
    m2, epochs, steps = build("mlp:36-16-3", seed=0), [], []
    h = fit(m2, data, data, cfg, checkpoint_dir=tmp_path, on_epoch=lambda hist: epochs.append(hist.epoch[-1]),
            on_step=lambda s: steps.append((s.epoch, s.step)))
    # epoch 1 was saved before the interruption: only epochs 2 and 3 are trained, on the schedule's later steps
    assert epochs == [2, 3] and steps == [(e, s) for e, s in ref_steps if e >= 2] and steps[0][1] == 7
    assert h.lr == pytest.approx(h_ref.lr, rel=1e-12)
    assert h.val_loss == pytest.approx(h_ref.val_loss, rel=1e-6)
    for p, q in zip(ref.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q)
    # augmentation changes training (not evaluation)
    plain = build("mlp:36-16-3", seed=0)
    fit(plain, data, data, TrainConfig(**{**cfg.__dict__, "augment": "none"}))
    assert any(not torch.equal(p, q) for p, q in zip(ref.parameters(), plain.parameters()))


def test_width_study_cli_takes_the_recipe(tmp_path, one_thread):
    from lossprobe.studies.width import DEEP, WidthConfig

    cfg = WidthConfig(**{**DEEP, "widths": [8], "epochs": 2})
    t = cfg.train_config()
    assert (t.schedule, t.augment, t.optimizer, t.weight_decay) == ("onecycle", "crop+flip", "momentum", 5e-4)
    with pytest.raises(UserError, match="augment"):
        WidthConfig(augment="bad")


def test_recipe_from_toml_and_flags(tmp_path):
    from lossprobe.runtime import config
    from lossprobe.studies.two_seeds import TwoSeedsConfig

    f = tmp_path / "r.toml"
    f.write_text('warmup_epochs = 1\naugment = "crop+flip"\nschedule = "onecycle"\n')
    t = config.load(TwoSeedsConfig, f, {"lr": 0.01, "crop_padding": 2}).train_config(0)
    assert (t.warmup_epochs, t.augment, t.schedule, t.lr, t.crop_padding) == (1.0, "crop+flip", "onecycle", 0.01, 2)
    with pytest.raises(UserError, match="warmup_epochs"):
        config.load(TwoSeedsConfig, None, {"warmup_epochs": 12})
