import pickle

import pytest
import torch

from conftest import tiny_mlp
from lossprobe import TrainConfig, UserError, fit, load_checkpoint, save_checkpoint
from lossprobe.models import build
from lossprobe.training.loop import TrainingDiverged
from lossprobe.training.checkpoints import load_state_dict


def test_fit_records_history_and_learns(spiral):
    model = build("mlp:2-32-32-2", seed=0)
    h = fit(model, spiral, spiral, TrainConfig(epochs=30, lr=1e-2, batch_size=32, schedule="constant"))
    assert h.epoch == list(range(31))
    assert h.train_loss[-1] < 0.7 * h.train_loss[0]
    assert len(h.val_accuracy) == 31 and all(0 <= a <= 1 for a in h.val_accuracy)
    assert h.seconds == sorted(h.seconds)


def test_init_seed_and_data_seed_are_separate(spiral):
    cfg = TrainConfig(epochs=2, batch_size=16)
    a, b = build("mlp:2-8-2", seed=0), build("mlp:2-8-2", seed=0)
    fit(a, spiral, None, cfg)
    fit(b, spiral, None, cfg)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = build("mlp:2-8-2", seed=0)
    fit(c, spiral, None, TrainConfig(epochs=2, batch_size=16, data_seed=1))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_interrupted_training_resumes_to_identical_weights(spiral, tmp_path, monkeypatch):
    cfg = TrainConfig(epochs=4, batch_size=16, trajectory_every=5)
    ref, ref_steps = build("mlp:2-8-2", seed=0), []
    h_ref = fit(ref, spiral, spiral, cfg, on_step=lambda s: ref_steps.append((s.epoch, s.step)))
    import lossprobe.training.loop as tr

    real = tr.evaluate_model
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 6:  # during epoch 2's evaluation
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(tr, "evaluate_model", flaky)
    m = build("mlp:2-8-2", seed=0)
    with pytest.raises(KeyboardInterrupt):
        fit(m, spiral, spiral, cfg, checkpoint_dir=tmp_path)
    monkeypatch.setattr(tr, "evaluate_model", real)
    assert [p.name for p in sorted(tmp_path.glob("model-*.safetensors"))] == ["model-1.safetensors"]
    m2 = build("mlp:2-8-2", seed=0)
    epochs, steps = [], []
    h = fit(m2, spiral, spiral, cfg, checkpoint_dir=tmp_path, on_epoch=lambda hist: epochs.append(hist.epoch[-1]),
            on_step=lambda s: steps.append((s.epoch, s.step)))
    # epoch 1 was finished and saved: the resumed run trains epochs 2-4 only, its steps numbered on from epoch 1's
    assert epochs == [2, 3, 4]
    assert steps == [(e, s) for e, s in ref_steps if e >= 2] and steps[0][1] > 1
    assert h.epoch == h_ref.epoch
    assert h.val_loss == pytest.approx(h_ref.val_loss, rel=1e-6)
    for p, q in zip(ref.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q)
    assert h.trajectory.shape == h_ref.trajectory.shape
    torch.testing.assert_close(h.trajectory, h_ref.trajectory)
    # a finished run reopened: no epoch is trained again, the weights are the saved ones
    m3, epochs = build("mlp:2-8-2", seed=0), []
    h3 = fit(m3, spiral, spiral, cfg, checkpoint_dir=tmp_path, on_epoch=lambda hist: epochs.append(hist.epoch[-1]),
             on_step=lambda s: epochs.append(s))
    assert epochs == [] and h3.epoch == h_ref.epoch
    for p, q in zip(ref.parameters(), m3.parameters()):
        torch.testing.assert_close(p, q)
    with pytest.raises(UserError, match="different configuration"):
        fit(build("mlp:2-8-2", seed=0), spiral, spiral, TrainConfig(epochs=5), checkpoint_dir=tmp_path)


def test_divergence_stops_with_clear_message_and_keeps_history(spiral):
    model = build("mlp:2-8-2", seed=0)
    with pytest.raises(TrainingDiverged, match="diverged") as e:
        fit(model, spiral, spiral, TrainConfig(optimizer="sgd", lr=1e12, epochs=5, batch_size=16, schedule="constant"))
    assert e.value.history.epoch[0] == 0 and e.value.history.stopped


def test_bad_config():
    with pytest.raises(UserError, match="optimizer"):
        TrainConfig(optimizer="adamm")
    with pytest.raises(UserError, match="lr"):
        TrainConfig(lr=-1)
    with pytest.raises(UserError, match="unknown training option"):
        TrainConfig.from_dict({"epoch": 3})


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoints_load_safely(tmp_path):
    m = tiny_mlp()
    save_checkpoint(m, tmp_path / "m.safetensors")
    torch.save(m.state_dict(), tmp_path / "m.pt")
    for f in ("m.safetensors", "m.pt"):
        m2 = tiny_mlp(seed=9)
        load_checkpoint(m2, tmp_path / f)
        assert all(torch.equal(p, q) for p, q in zip(m.parameters(), m2.parameters()))
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"w": Evil()}, fh)
    with pytest.raises(UserError, match="could not be loaded safely"):
        load_state_dict(tmp_path / "evil.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(UserError, match="not a state dict"):
        load_state_dict(tmp_path / "list.pt")
    with pytest.raises(UserError, match="does not exist"):
        load_state_dict(tmp_path / "nope.pt")
    with pytest.raises(UserError, match="'1.weight'"):
        load_checkpoint(tiny_mlp(widths=(2, 5, 2)), tmp_path / "m.safetensors")
