"""Typed configs: overrides, presets, validation messages, round trip."""

from __future__ import annotations

import pytest

from ltrobust.config import (RunConfig, dump_yaml, fmt_fraction, list_presets, load_preset, load_run_config,
                             method_options, parse_value, resolve_config)
from ltrobust.errors import ConfigError


def test_defaults_and_overrides_by_leaf_dotted_and_alias():
    cfg = resolve_config(["imbalance=50", "train.lr=0.05", "method=trades", "loss=bsl", "epochs=3", "beta=3"])
    assert cfg.data.imbalance == 50.0 and cfg.train.lr == 0.05 and cfg.train.epochs == 3
    assert cfg.method.name == "trades" and cfg.method.loss == "bsl"
    assert method_options(cfg).beta == 3.0


def test_fractions_lists_and_bools():
    assert parse_value("8/255") == pytest.approx(8 / 255)
    cfg = resolve_config(["attack.eps=4/255", "attacks=clean,pgd20,aa", "milestones=75,90", "deterministic=true"])
    assert cfg.attack.eps == pytest.approx(4 / 255)
    assert cfg.eval.attacks == ("clean", "pgd20", "aa")
    assert cfg.train.milestones == (75, 90) and cfg.train.deterministic is True


def test_optional_float_option_takes_none_numbers_and_fractions(tmp_path):
    assert method_options(resolve_config(["method=reat"])).tail_margin == 1.0
    for text, want in (("none", None), ("null", None), ("0.5", 0.5), ("1/2", 0.5), ("3", 3.0)):
        cfg = resolve_config(["method=reat", f"method.tail_margin={text}"])
        assert method_options(cfg).tail_margin == want
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(cfg := resolve_config(["method=reat", "method.tail_margin=none"])))
    assert method_options(load_run_config(path)).tail_margin is None
    with pytest.raises(ConfigError, match="tail_margin='abc' is not a valid float"):
        resolve_config(["method=reat", "method.tail_margin=abc"])
    with pytest.raises(ConfigError, match="tail_margin=0.0: use a finite number of nats > 0"):
        resolve_config(["method=reat", "method.tail_margin=0"])


def test_ambiguous_leaf_asks_for_the_section():
    with pytest.raises(ConfigError, match="'eps' is ambiguous: write one of attack.eps, eval.eps"):
        resolve_config(["eps=0.1"])


@pytest.mark.parametrize("override,match", [
    ("imbalanse=50", "unknown config key 'imbalanse'.*Did you mean.*imbalance"),
    ("imbalance=0.5", "imbalance=0.5 is below 1"),
    ("attack.eps=8", "outside \\[0, 1\\].*8/255"),
    ("eval.eps=-0.1", "outside \\[0, 1\\]"),
    ("attack.steps=-1", "negative"),
    ("method=pgd_att", "unknown method 'pgd_att'.*Did you mean 'pgd_at'"),
    ("loss=bls", "unknown loss 'bls'.*Did you mean 'bsl'"),
    ("dataset=cifar10", "unknown data set 'cifar10'.*cifar10-lt"),
    ("model=resnet19", "unknown model 'resnet19'.*resnet18"),
    ("train.lr=abc", "train.lr='abc' is not a valid float"),
    ("preset=robal-r-cifar10-wrn34", "unknown preset"),
])
def test_bad_input_names_the_problem_and_fix(override, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config([override])


def test_method_option_of_another_method_is_refused():
    with pytest.raises(ConfigError, match="method 'pgd_at' has no option 'beta'|unknown config key 'beta'"):
        resolve_config(["method=pgd_at", "method.beta=6"])


def test_yaml_roundtrip(tmp_path):
    cfg = resolve_config(["method=trades", "beta=2", "imbalance=20", "milestones=5,8", "attacks=clean,pgd20"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_run_config(path) == cfg


def test_frozen():
    cfg = RunConfig()
    with pytest.raises(Exception):
        cfg.train.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_loads_and_validates(name):
    flat = load_preset(name)
    assert flat
    cfg = resolve_config([f"preset={name}"])
    assert cfg.preset == name


def test_reference_numbers_are_kept_through_presets_yaml_and_grids(tmp_path):
    """A preset's `reference:` list (the paper numbers it targets) survives resolution, config.yaml and a grid
    run entry; a derived preset carries its own list, not its base's; malformed lists are refused clearly."""
    cfg = resolve_config(["preset=reat-cifar10lt-resnet18", "epochs=2"])
    first = cfg.reference[0]
    assert first["source"].startswith("Li, Xu and Zhang") and first["table"] == "Table 1"
    assert first["values"] == {"clean": 67.33, "pgd20": 36.2, "pgd100": 36.02, "cw100": 33.98, "aa": 32.08}
    assert first["settings"] == {"epochs": 80, "data": "cifar-pickle", "checkpoint": "best-test"}
    c100 = resolve_config(["preset=reat-cifar100lt-resnet18"]).reference
    assert c100[0]["table"] == "Table 4" and c100[0]["values"]["clean"] == 45.94
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_run_config(path).reference == cfg.reference
    assert resolve_config(["dataset=digits-lt"]).reference == ()
    ref = [{"source": "x.txt", "table": "Table 9", "values": {"clean.tail_group": 50},
            "settings": {"model.name": "mlp"}}]
    assert resolve_config({"reference": ref}).reference[0]["values"] == {"clean.tail_group": 50.0}
    from ltrobust.experiments.sweep import load_grid

    grid = tmp_path / "g.yaml"
    grid.write_text("base: [dataset=digits-lt, model=mlp]\nruns:\n  - {label: A, reference: [{source: x.txt, "
                    "table: T1, values: {clean: 1.5}}]}\n  - {label: B}\n")
    points = load_grid(grid).points
    assert points[0].cfg.reference[0]["values"] == {"clean": 1.5} and points[1].cfg.reference == ()
    for bad, match in (({"table": "T"}, "source"), ({"source": "x", "table": "T", "values": {"clean": "high"}},
                                                                "not a percentage"),
                       ({"source": "x", "table": "T", "values": {"a": 1}, "settings": {"epoch": 3}}, "epochs"),
                       ({"source": "x", "table": "T", "values": {"a": 1}, "settings": {"checkpoint": "best"}},
                        "best-val"), ({"source": "x", "table": "T", "values": {"a": 1}, "colour": 1}, "unknown key")):
        with pytest.raises(ConfigError, match=match):
            resolve_config({"reference": [bad]})


def test_fractions_print_as_fractions_and_config_yaml_shows_them(tmp_path):
    cases = {8 / 255: "8/255", 2 / 255: "2/255", 12 / 255: "12/255", 1 / 3: "1/3", 1 / 170: "1/170", 0.1: "0.1",
             1e-05: "1e-05", 0.03125: "0.03125", 2.0: "2.0", -8 / 255: "-8/255", 0.123456789: "0.123456789"}
    assert {v: fmt_fraction(v) for v in cases} == cases
    assert fmt_fraction((0.0, 2 / 255, 16 / 255)) == "0.0,2/255,16/255" and fmt_fraction("pgd20") == "pgd20"
    cfg = resolve_config(["attack.eps=4/255", "eval.step_size=1/255", "train.lr=0.1"])
    text = dump_yaml(cfg)
    assert "  eps: 0.01568627450980392  # 4/255\n" in text and "  step_size: 0.00392156862745098  # 1/255\n" in text
    assert "  lr: 0.1\n" in text and "  cosine_gamma: 0.03125\n" in text  # short decimals stay as they are
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert load_run_config(path) == cfg  # the comments change nothing for a YAML reader
