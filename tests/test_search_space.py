"""Search space: parsing the example, sampling, and one clear error per mistake."""

import numpy as np
import pytest

from lossprobe.errors import UserError
from lossprobe.search.space import SearchSpace, load_space

EXAMPLE = "examples/space.toml"


def test_example_parses_and_samples_inside_ranges():
    s = load_space(EXAMPLE)
    assert s.names == ["lr", "momentum", "weight_decay", "batch_size", "optimizer", "width", "depth", "dropout"]
    assert s.fixed["activation"] == "relu" and s.epochs == 6
    for i in range(20):
        c = s.sample(np.random.default_rng(i))
        assert 1e-4 <= c["lr"] <= 0.5 and c["batch_size"] in (32, 64, 128, 256)
        assert isinstance(c["width"], int) and 16 <= c["width"] <= 256 and 1 <= c["depth"] <= 3
    assert s.sample(3) == s.sample(3)  # seeded
    enc = s.encode(s.sample(0))
    assert list(enc) == s.encoded_names()
    assert sum(enc[f"hp_optimizer={o}"] for o in ("sgd", "momentum", "adam", "rmsprop")) == 1.0
    assert SearchSpace.from_dict(s.to_dict()).to_dict() == s.to_dict()


def test_log_sampling_is_log_uniform():
    s = SearchSpace.from_dict({"params": {"lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True}}})
    v = np.log10([s.sample(np.random.default_rng(i))["lr"] for i in range(400)])
    assert abs(np.median(v) - (-3)) < 0.4  # a linear draw would put the median near 0.05 (log10 ≈ -1.3)


@pytest.mark.parametrize("params,needle", [
    ({"learning_rate": {"type": "float", "low": 0.1, "high": 1}}, "unknown parameter 'learning_rate'"),
    ({"lr": {"type": "float", "low": 0.1, "high": 0.01}}, "low < high"),
    ({"weight_decay": {"type": "float", "low": 0, "high": 0.1, "log": True}}, "log-scaled, so low must be > 0"),
    ({"lr": {"type": "float", "low": 0.1, "high": 1, "scale": "log"}}, "unknown key 'scale'"),
    ({"optimizer": {"type": "categorical", "choices": ["sgd", "lion"]}}, "'optimizer' must be one of"),
    ({"optimizer": {"type": "categorical", "choices": []}}, "non-empty list of choices"),
    ({"width": {"type": "int", "low": 8.5, "high": 64}}, "must be an integer"),
    ({"width": {"type": "float", "low": 8, "high": 64}}, "use type = \"int\""),
    ({"lr": {"low": 0.1, "high": 1}}, "needs type"),
    ({"dropout": {"type": "float", "low": 0.0, "high": 1.5}}, "'dropout' must be in [0, 1)"),
    ({"batch_size": {"type": "categorical", "choices": [32, 32]}}, "lists a choice twice"),
    ({"lr": 0.1}, "every parameter is fixed"),
])
def test_validation_errors_name_the_problem(params, needle):
    with pytest.raises(UserError, match=None) as e:
        SearchSpace.from_dict({"params": params})
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_file_and_section_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_space(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[params\nlr = 1")
    with pytest.raises(UserError, match="not valid TOML"):
        load_space(bad)
    with pytest.raises(UserError, match="unknown section 'search'"):
        SearchSpace.from_dict({"search": {}, "params": {"lr": {"type": "float", "low": 0.1, "high": 1}}})
    with pytest.raises(UserError, match="train.model must be"):
        SearchSpace.from_dict({"train": {"model": "resnet"}, "params": {"lr": {"type": "float", "low": 0.1, "high": 1}}})
    with pytest.raises(UserError, match="needs a \\[params\\] table"):
        SearchSpace.from_dict({"train": {"epochs": 3}})


def test_cli_reports_a_bad_space_in_one_line(tmp_path, capsys):
    from lossprobe.cli import main

    bad = tmp_path / "space.toml"
    bad.write_text('[params]\nlr = { type = "float", low = 1.0, high = 0.1 }\n')
    assert main(["search", "--space", str(bad), "--dataset", "spiral", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lossprobe: error:") and "low < high" in err and "\n" not in err
