"""The command line's help and its answers to common slips (in-process ``cli.main``, no training)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from ltrobust import cli
from ltrobust.analysis.base import CommonOptions
from ltrobust.config import EvalConfig
from ltrobust.evaluation.audit import AuditOptions
from ltrobust.registry import ANALYSES
from ltrobust.report import OPTIONS as REPORT_OPTIONS

README = Path(__file__).resolve().parents[1] / "README.md"


def help_text(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_eval_audit_report_and_analyze_help_list_their_keys(capsys):
    text = help_text("eval", capsys)
    for f in dataclasses.fields(EvalConfig):
        assert re.search(rf"^  (eval\.)?{f.name}=", text, re.M), f.name
    assert "eval.eps=8/255" in text and "eval.step_size=2/255" in text and "eval.attacks=clean,pgd20" in text
    text = help_text("audit", capsys)
    for f in dataclasses.fields(AuditOptions):
        assert re.search(rf"^  audit\.{f.name}=", text, re.M), f.name
    assert "audit.kappas=-2.0,-1.0,0.0,1.0,2.0" in text and "checkpoint=best" in text and "eval.eps=8/255" in text
    text = help_text("report", capsys)
    for name in REPORT_OPTIONS:
        assert re.search(rf"^  {name}=", text, re.M), name
    assert "metric=accuracy" in text and "seed_keys=train.seed" in text
    text = help_text("analyze", capsys)
    for f in dataclasses.fields(CommonOptions):
        assert re.search(rf"^  {f.name}=", text, re.M), f.name
    for kind in ANALYSES.names():
        opts = [f.name for f in dataclasses.fields(ANALYSES.get(kind).Options)
                if f.name not in {c.name for c in dataclasses.fields(CommonOptions)}]
        line = re.search(rf"^  {kind} .*\n\s+options: (.*)$", text, re.M)
        assert line and [o.split("=")[0] for o in line.group(1).split(", ")] == opts, kind
    assert "eps=0.0,2/255,4/255,8/255,12/255,16/255" in text  # attack-budget's eps grid
    assert "0.00784313725490196" not in text and "0.0313725" not in text


def test_train_help_points_to_a_readme_section_that_exists(capsys):
    text = help_text("train", capsys)
    section = re.search(r'see README "([^"]+)"', text).group(1)
    headings = [m.group(1).strip() for m in re.finditer(r"^#+ (.+)$", README.read_text(), re.M)]
    assert section == cli.README_CONFIG_SECTION and section in headings
    assert "tau=1.0" in text  # at_bsl's option default, as it is typed


def test_a_misspelt_key_suggests_the_right_one_once(capsys):
    assert cli.main(["train", "epoch=3"]) == 2
    err = capsys.readouterr().err
    suggested = err.split("Did you mean ", 1)[1].split("?", 1)[0].split(", ")
    assert suggested[0] == "epochs" and suggested.count("epochs") == 1 and err.count("\n") == 1


@pytest.mark.parametrize("argv,want", [
    (["train", "--epochs", "3"], "write epochs=3 "),
    (["train", "--epochs=3", "--batch-size", "64", "dataset=digits-lt"], "write epochs=3 batch_size=64 "),
    (["train", "--deterministic"], "write deterministic=true "),
    (["train", "--attack.eps", "-8/255", "-v"], "write attack.eps=-8/255 "),
    (["eval", "runs/x", "--attacks", "clean,aa"], "write attacks=clean,aa "),
])
def test_dashed_options_name_the_key_value_form(argv, want, capsys):
    assert cli.dashed_options(["--import", "my_plugins", "train", "--import=other", "epochs=1"]) == []  # real options
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: settings are written key=value") and want in err and err.count("\n") == 1


def test_fractions_print_as_fractions_in_messages(capsys):
    assert cli.main(["train", "attack.eps=300/255"]) == 2
    assert "attack.eps=300/255 is outside [0, 1]" in capsys.readouterr().err
    assert cli.main(["train", "train.epochs=8/255"]) == 2
    assert "train.epochs=8/255 is not a valid int" in capsys.readouterr().err


def test_list_names_the_experiment_trackers(capsys):
    assert cli.main(["list"]) == 0
    assert re.search(r"^experiment trackers \(train\.logger\): .*tensorboard", capsys.readouterr().out, re.M)
