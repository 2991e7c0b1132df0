"""Evaluating any model: ``ltrobust.evaluate`` on every data form, ``ltrobust eval weights=... model=...``
(module:callable, torchvision, RobustBench), ``dataset=imagefolder``, plugins, and what each method needs."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import ltrobust
from ltrobust import cli
from ltrobust.attacks.autoattack import AutoAttackProgress, run_autoattack
from ltrobust.config import AttackConfig, DataConfig
from ltrobust.data import build_data
from ltrobust.errors import CheckpointError, ConfigError, DataError
from ltrobust.evaluation.metrics import summarize
from ltrobust.models.foreign import load_weights, read_state_dict
from ltrobust.registry import LOSSES, METHODS

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

NET_MODULE = '''
from torch import nn


def tiny(num_classes=10, width=16):
    """Not an ltrobust model: a plain MLP on 3x8x8 images in [0, 1]."""
    return nn.Sequential(nn.Flatten(), nn.Linear(192, width), nn.ReLU(), nn.Linear(width, num_classes))
'''


# --------------------------------------------------------------------------------------- Python API
def test_evaluate_every_data_form_gives_one_result_and_direct_recall(digits, mlp):
    x, y, counts = digits
    x_u8 = (x * 255).round().to(torch.uint8)
    forms = {
        "pair": (x, y),
        "uint8 pair": (x_u8, y),
        "dataset": torch.utils.data.TensorDataset(x, y),
        "loader": torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64),
    }
    results = {k: ltrobust.evaluate(mlp, v, class_counts=counts, attacks=("clean", "pgd5"), progress=False)
               for k, v in forms.items()}
    ref = results["pair"]
    with torch.no_grad():
        correct = (mlp(x).argmax(1) == y).numpy()
    direct = [100.0 * correct[y.numpy() == c].mean() for c in range(10)]
    assert ref.per_class["clean"] == pytest.approx(direct)
    assert ref.accuracy["clean"] == pytest.approx(100.0 * correct.mean())
    assert 0 < ref.accuracy["pgd5"] <= ref.accuracy["clean"] < 100
    assert ref.accuracy["worst_case"] == ref.accuracy["pgd5"]
    np.testing.assert_array_equal(ref.robust["clean"], correct)
    expect = summarize(ref.robust["pgd5"], y, counts)
    for g in ("head", "body", "tail", "many", "medium", "few", "tail_group"):
        assert ref.groups["pgd5"][g] == pytest.approx(expect[g])
    assert ref.groups["pgd5"]["balanced"] == pytest.approx(expect["balanced_accuracy"])
    for name, res in results.items():
        assert res.accuracy == ref.accuracy, name
        for attack in ref.names:
            np.testing.assert_array_equal(res.robust[attack], ref.robust[attack], err_msg=name)


def test_evaluate_without_counts_leaves_groups_out_and_says_why(digits, mlp):
    x, y, _ = digits
    res = ltrobust.evaluate(mlp, (x[:100], y[:100]), attacks=("clean",), progress=False)
    assert set(res.groups["clean"]) == {"balanced", "worst_class"}
    assert "class_counts" in res.note
    assert res.to_dict()["groups_note"] == res.note
    assert len(res.to_dict()["samples"]["flags"]["clean"]) == 100


def test_evaluate_out_dir_resumes_and_save_writes_eval_files(digits, mlp, tmp_path):
    x, y, counts = digits
    kw = dict(class_counts=counts, attacks=("clean", "fgsm"), chunk_size=200, progress=False)
    first = ltrobust.evaluate(mlp, (x, y), out_dir=tmp_path / "ev", **kw)
    again = ltrobust.evaluate(mlp, (x, y), out_dir=tmp_path / "ev", **kw)
    assert first.result["chunks"] == 3 and first.result["chunks_reused"] == 0
    assert again.result["chunks_reused"] == 3 and again.accuracy == first.accuracy
    assert {p.name for p in (tmp_path / "ev").iterdir()} >= {"eval.json", "eval.md", "eval_samples.npz"}
    path = first.save(tmp_path / "saved", tag="mine")
    stored = json.loads(path.read_text())
    assert stored["results"]["fgsm"]["accuracy"] == first.accuracy["fgsm"]
    assert "| FGSM |" in (tmp_path / "saved" / "mine.md").read_text()
    flags = np.load(tmp_path / "saved" / "mine_samples.npz")["flags"]
    np.testing.assert_array_equal(flags[1], first.robust["fgsm"])
    # other attacks into the same out_dir and tag: the stored result is kept, and the error names eval.tag / tag=
    before = (tmp_path / "ev" / "eval.json").read_bytes()
    with pytest.raises(ConfigError, match="other settings.*eval.tag="):
        ltrobust.evaluate(mlp, (x, y), out_dir=tmp_path / "ev", **{**kw, "attacks": ("clean", "pgd5")})
    assert (tmp_path / "ev" / "eval.json").read_bytes() == before
    other = ltrobust.evaluate(mlp, (x, y), out_dir=tmp_path / "ev", tag="pgd5", **{**kw, "attacks": ("clean", "pgd5")})
    assert "pgd5" in other.accuracy and (tmp_path / "ev" / "pgd5.json").is_file()


def test_evaluate_refuses_bad_input_with_one_line(digits, mlp):
    x, y, _ = digits

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp

        def forward(self, x):
            return self.net(x), x

    with pytest.raises(DataError, match="return logits"):
        ltrobust.evaluate(Pair(), (x[:10], y[:10]), progress=False)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        ltrobust.evaluate(mlp, ((x[:10] - 0.5) / 0.2, y[:10]), progress=False)
    with pytest.raises(DataError, match="predicts 10 classes"):
        ltrobust.evaluate(mlp, (x[:10], y[:10] + 10), progress=False)
    with pytest.raises(DataError, match="class_counts has 3 entries"):
        ltrobust.evaluate(mlp, (x[:10], y[:10]), class_counts=[5, 3, 1], progress=False)


@pytest.mark.slow  # AutoAttack twice on 10 images: about 30 s on 2 shared cores
def test_worst_case_with_autoattack_is_never_above_a_direct_autoattack_run(digits, mlp, caplog):
    x, y, counts = digits
    idx = torch.arange(0, 500, 50)  # 10 images, 1 per class
    eps = 8 / 255
    with caplog.at_level(logging.INFO, logger="ltrobust.attacks.autoattack"):
        res = ltrobust.evaluate(mlp, (x[idx], y[idx]), class_counts=counts, attacks=("clean", "pgd20", "aa"),
                                eps=eps, progress=False)
    _, robust = run_autoattack(mlp, x[idx], y[idx], eps=eps)
    direct = 100.0 * int(robust.sum()) / len(robust)
    assert res.accuracy["worst_case"] <= direct
    assert not (res.robust["worst_case"] & ~robust.numpy()).any()  # robust to the suite => robust to AA alone
    assert res.accuracy["worst_case"] <= res.accuracy["pgd20"] <= res.accuracy["clean"]
    lines = [r.getMessage() for r in caplog.records if r.name == "ltrobust.attacks.autoattack"]
    assert any("robust accuracy after APGD-CE" in m for m in lines)


def test_autoattack_progress_lines_and_observer_events(caplog):
    events = []
    progress = AutoAttackProgress(["apgd-ce", "apgd-t", "fab-t", "square"], 100,
                                  lambda event, **info: events.append((event, info)))
    pkg = logging.getLogger("test-auto-attack")
    pkg.propagate = False
    pkg.addHandler(progress)
    pkg.setLevel(logging.DEBUG)
    with caplog.at_level(logging.INFO, logger="ltrobust.attacks.autoattack"):
        pkg.debug("initial accuracy: 80.00%")
        pkg.debug("running apgd-ce")
        pkg.debug("robust accuracy after APGD-CE: 40.00% (total time 8.0 s)")
        pkg.debug("running apgd-t")
        pkg.debug("robust accuracy after APGD-T: 20.00% (total time 14.0 s)")
    pkg.removeHandler(progress)
    msgs = [r.getMessage() for r in caplog.records]
    # no time-left guess in the log (it was 4-8x too low): the evaluation's progress bar measures each attack
    assert "AutoAttack 1/4: robust accuracy after APGD-CE 40.00% (8 s so far)" in msgs
    assert "AutoAttack 2/4: robust accuracy after APGD-T 20.00% (14 s so far)" in msgs
    assert events == [("start", {"attacks": ["apgd-ce", "apgd-t", "fab-t", "square"], "n": 100, "robust": 0.8}),
                      ("stage", {"name": "apgd-ce"}), ("after", {"name": "apgd-ce", "robust": 0.4}),
                      ("stage", {"name": "apgd-t"}), ("after", {"name": "apgd-t", "robust": 0.2})]


# ------------------------------------------------------------------------------------ image folders
def write_folder(root: Path, x: torch.Tensor, y: torch.Tensor, split: str) -> None:
    """Lossless PNGs (RGB, from the images' first channel) in ``root/split/<class>/``."""
    from PIL import Image

    arr = (x * 255).round().to(torch.uint8)
    for i, (img, label) in enumerate(zip(arr, y.tolist())):
        folder = root / split / f"c{label}"
        folder.mkdir(parents=True, exist_ok=True)
        rgb = img.expand(3, -1, -1).permute(1, 2, 0).numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()
        Image.fromarray(np.ascontiguousarray(rgb)).save(folder / f"{i:04d}.png")


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory, digits):
    """digits' test images as an image folder (test/ only, 20 per class)."""
    x, y, _ = digits
    root = tmp_path_factory.mktemp("folder")
    keep = torch.cat([torch.nonzero(y == c).squeeze(1)[:20] for c in range(10)])
    write_folder(root, x[keep], y[keep], "test")
    return root


def test_imagefolder_counts_from_train_list_or_json(tmp_path, digits):
    x, y, _ = digits
    root = tmp_path / "data"
    sel = torch.cat([torch.nonzero(y == c).squeeze(1)[: 20 - 4 * c] for c in range(3)])  # 20, 16, 12
    write_folder(root, x[sel], y[sel], "train")
    test = torch.cat([torch.nonzero(y == c).squeeze(1)[20:25] for c in range(3)])
    write_folder(root, x[test], y[test], "test")
    d = build_data(DataConfig(dataset="imagefolder", data_dir=str(root)))
    assert d.class_counts == [20, 16, 12] and d.class_names == ["c0", "c1", "c2"] and d.num_classes == 3
    assert d.val is None and len(d.test) == 15 and d.image_size == 8 and d.channels == 3
    assert torch.equal(d.test.images[:, 0], (x[test, 0] * 255).round().to(torch.uint8))
    d = build_data(DataConfig(dataset="imagefolder", data_dir=str(root), class_counts="500,50,5"))
    assert d.class_counts == [500, 50, 5] and d.groups["tail"] == [2]
    (tmp_path / "counts.json").write_text(json.dumps({"c0": 7, "c1": 8, "c2": 9}))
    d = build_data(DataConfig(dataset="imagefolder", data_dir=str(root), class_counts=str(tmp_path / "counts.json")))
    assert d.class_counts == [7, 8, 9]
    with pytest.raises(ConfigError, match="lists 2 counts but there are 3 classes: give one per class"):
        build_data(DataConfig(dataset="imagefolder", data_dir=str(root), class_counts="1,2"))
    for bad, match in (("[10,5,2", r"is not a list of numbers \(a bracket left open\?\)"),  # issue 29 item 11
                       ("10,0,2", r"class 1 has 0 training images; every class needs a count >= 1"),  # item 18
                       ("10,-1,2", r"class 1 has -1 training images"), ("10,a,2", "must list integers"),
                       (str(tmp_path / "nope.json"), "no such file")):
        with pytest.raises(ConfigError, match=r"class_counts=.*" + match):
            build_data(DataConfig(dataset="imagefolder", data_dir=str(root), class_counts=bad))
    (tmp_path / "zero.json").write_text(json.dumps({"c0": 7, "c1": 0, "c2": 9}))
    with pytest.raises(ConfigError, match="c1 has 0 training images"):
        build_data(DataConfig(dataset="imagefolder", data_dir=str(root), class_counts=str(tmp_path / "zero.json")))
    with pytest.raises(ConfigError, match="applies to dataset=imagefolder"):
        build_data(DataConfig(dataset="digits-lt", class_counts="1,2"))


def test_imagefolder_without_train_needs_counts_and_mixed_sizes_need_image_size(tmp_path):
    from PIL import Image

    for c, size in (("a", 10), ("b", 14)):
        (tmp_path / "test" / c).mkdir(parents=True)
        Image.new("RGB", (size, size + 4), (10, 20, 30)).save(tmp_path / "test" / c / "0.png")
    with pytest.raises(DataError, match="class_counts="):
        build_data(DataConfig(dataset="imagefolder", data_dir=str(tmp_path)))
    with pytest.raises(DataError, match="image_size=N"):
        build_data(DataConfig(dataset="imagefolder", data_dir=str(tmp_path), class_counts="9,3"))
    d = build_data(DataConfig(dataset="imagefolder", data_dir=str(tmp_path), class_counts="9,3", image_size=8))
    assert tuple(d.test.images.shape) == (2, 3, 8, 8) and d.class_counts == [9, 3]
    assert d.test.images[0, :, 4, 4].tolist() == [10, 20, 30]


# ---------------------------------------------------------------------------------- foreign weights
@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """A user module ``user_nets_14`` on sys.path (the user's own code, not ltrobust's)."""
    (tmp_path / "user_nets_14.py").write_text(NET_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("user_nets_14")
    sys.modules.pop("user_nets_14", None)


def sharpen(net: nn.Module) -> None:
    """Scale the last linear layer so a random network's predictions vary from image to image (then equal
    per-sample predictions prove that these very weights were loaded)."""
    last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.copy_(torch.randn(last.weight.shape, generator=torch.Generator().manual_seed(0)) * 100)


def assert_same_predictions(out: Path, pred: torch.Tensor) -> None:
    samples = np.load(out / "eval_samples.npz")
    assert len(set(pred.tolist())) >= 3
    np.testing.assert_array_equal(samples["preds"][0], pred.numpy())


def folder_tensors(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    d = build_data(DataConfig(dataset="imagefolder", data_dir=str(root), class_counts=",".join(["5"] * 10)))
    return d.test.images.float() / 255, d.test.labels


def test_cli_evaluates_a_dataparallel_state_dict_of_user_code_on_an_image_folder(tmp_path, user_code, digit_folder,
                                                                                digits, capsys):
    x, y = folder_tensors(digit_folder)
    torch.manual_seed(0)
    net = user_code.tiny(width=24)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    weights = tmp_path / "dp.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, weights)
    out = tmp_path / "result"
    counts = ",".join(str(c) for c in digits[2])
    code = cli.main(["eval", f"weights={weights}", "model=user_nets_14:tiny", "model.width=24", "dataset=imagefolder",
                     f"data_dir={digit_folder}", f"class_counts={counts}", "attacks=clean,fgsm", f"out={out}",
                     "train.device=cpu"])
    assert code == 0
    res = json.loads((out / "eval.json").read_text())
    with torch.no_grad():
        direct = 100.0 * (net(x).argmax(1) == y).float().mean().item()
    assert 10 < res["results"]["clean"]["accuracy"] == pytest.approx(direct)
    assert res["model"] == "user_nets_14:tiny" and res["class_counts"] == digits[2]
    assert "tail" in res["results"]["fgsm"] and f"{out}/eval.json" in capsys.readouterr().out


def test_cli_torchvision_resnet18_with_declared_normalisation(tmp_path, digit_folder):
    import torchvision

    x, y = folder_tensors(digit_folder)
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    sharpen(net)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    torch.save({"model": {f"_orig_mod.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "r18.pt")
    code = cli.main(["eval", f"weights={tmp_path / 'r18.pt'}", "model=torchvision.resnet18", "dataset=imagefolder",
                     f"data_dir={digit_folder}", "class_counts=" + ",".join(["5"] * 10), "attacks=clean",
                     "model.mean=0.4,0.5,0.6", "model.std=0.2,0.25,0.3", f"out={tmp_path / 'r'}", "train.device=cpu"])
    assert code == 0
    with torch.no_grad():
        z = net((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    res = json.loads((tmp_path / "r" / "eval.json").read_text())
    assert res["results"]["clean"]["per_class"] == pytest.approx(
        [100.0 * (z.argmax(1) == y)[y == c].float().mean().item() for c in range(10)])
    assert_same_predictions(tmp_path / "r", z.argmax(1))


def _robustbench_installed() -> bool:
    """The robustbench extra, installed as a distribution. torchattacks' wheel also drops a partial
    ``robustbench`` folder into site-packages (no metadata, and it needs the removed pkg_resources): that
    one does not count."""
    import importlib.metadata

    try:
        importlib.metadata.version("robustbench")
    except importlib.metadata.PackageNotFoundError:
        return False
    return importlib.util.find_spec("robustbench") is not None


@pytest.mark.skipif(not _robustbench_installed(), reason="the robustbench extra is not installed "
                                                         "(pip install -e '.[robustbench]')")
def test_cli_robustbench_checkpoint_of_a_robustbench_architecture(tmp_path):
    from ltrobust.models.foreign import build_foreign, robustbench_entry

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar"
    from PIL import Image

    for c in range(10):  # 10 classes (the zoo's CIFAR-10 models), 1 test image each, 32x32
        (root / "test" / f"k{c}").mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "test" / f"k{c}" / "0.png")
    arch = "robustbench.cifar10.Linf.Ding2020MMA"
    net = robustbench_entry(arch)[3]["model"]()  # RobustBench's own architecture, random weights
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "rb.pt")
    code = cli.main(["eval", f"weights={tmp_path / 'rb.pt'}", f"model={arch}", "dataset=imagefolder",
                     f"data_dir={root}", "class_counts=" + ",".join(["10"] * 10), "attacks=clean",
                     f"out={tmp_path / 'r'}", "train.device=cpu"])
    assert code == 0
    x = build_data(DataConfig(dataset="imagefolder", data_dir=str(root), class_counts=",".join(["1"] * 10))).test.images
    with torch.no_grad():
        pred = net.eval()(x.float() / 255).argmax(1)
    loaded = build_foreign(arch, 10, weights=tmp_path / "rb.pt").state_dict()  # what the CLI evaluated
    assert loaded.keys() == net.state_dict().keys()
    assert all(torch.equal(v, loaded[k]) for k, v in net.state_dict().items())
    res = json.loads((tmp_path / "r" / "eval.json").read_text())
    assert res["results"]["clean"]["accuracy"] == pytest.approx(100.0 * (pred == torch.arange(10)).float().mean().item())


def test_weights_loading_names_mismatches_and_refuses_pickled_models(tmp_path, user_code, capsys):
    net = user_code.tiny(width=16)
    torch.save({"net": net.state_dict()}, tmp_path / "w.pt")
    state = read_state_dict(tmp_path / "w.pt")
    with pytest.raises(CheckpointError) as err:
        load_weights(user_code.tiny(width=8), state, "w.pt")
    msg = str(err.value)
    assert "shape mismatch" in msg and "1.weight (16, 192) vs (8, 192)" in msg
    with pytest.raises(CheckpointError, match=r"missing \(2\): 5.weight, 5.bias; unexpected \(2\): 3.weight, 3.bias"):
        load_weights(nn.Sequential(nn.Flatten(), nn.Linear(192, 16), nn.ReLU(), nn.Identity(), nn.Identity(),
                                   nn.Linear(16, 10)), state, "w.pt")
    torch.save(net, tmp_path / "full.pt")
    code = cli.main(["eval", f"weights={tmp_path / 'full.pt'}", "model=user_nets_14:tiny", "dataset=digits-lt"])
    err_line = capsys.readouterr().err
    assert code == 2 and err_line.count("\n") == 1
    assert "model.state_dict(), with torch.save to weights.pt" in err_line and "weights=weights.pt" in err_line


# ------------------------------------------------------------------------------------------ plugins
PLUGIN = '''
from ltrobust.registry import MODELS
from ltrobust.models.small import {factory}

MODELS.register("{name}")({factory})
'''


def test_import_flag_and_plugins_variable_register_user_entries(tmp_path, monkeypatch, capsys):
    from ltrobust.models import small

    factory = next(n for n in ("mlp", "smallcnn") if hasattr(small, n))
    for mod, name in (("plug_a_14", "plugin_net_a"), ("plug_b_14", "plugin_net_b")):
        (tmp_path / f"{mod}.py").write_text(PLUGIN.format(factory=factory, name=name))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("LTROBUST_PLUGINS", "plug_b_14")
    assert cli.main(["list", "--import", "plug_a_14"]) == 0
    out = capsys.readouterr().out
    assert "plugin_net_a" in out and "plugin_net_b" in out
    assert cli.main(["--import", "no_such_plugin_14", "list"]) == 2
    assert "cannot import plugin 'no_such_plugin_14'" in capsys.readouterr().err


# ------------------------------------------------------------------------------- methods, plain nets
@pytest.mark.parametrize("name", [n for n in METHODS.names() if n != "self_distill"])
def test_every_method_trains_a_plain_module_or_says_what_it_needs(name):
    torch.manual_seed(0)
    counts = [50, 20, 5]
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    method = METHODS.get(name)(counts, AttackConfig(steps=2), LOSSES.get("ce")(counts))
    needs = {"reat": "return_features=True", "robal": "CosineHead", "he": "cosine head",
             "las_at": "strategy network", "mcat": "class generators"}
    if name in needs:
        with pytest.raises(ConfigError, match=needs[name]):
            method.forward(model, x, y)
        return
    out = method.forward(model, x, y)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and model[1].weight.grad is not None


def test_reat_runs_on_a_user_net_with_the_features_contract():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU())
            self.fc = nn.Linear(8, 3)

        def forward(self, x, return_features=False):
            f = self.body(x)
            z = self.fc(f)
            return (z, f) if return_features else z

    counts = [50, 20, 5]
    method = METHODS.get("reat")(counts, AttackConfig(steps=2), LOSSES.get("bsl")(counts))
    out = method.forward(Net(), torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2]))
    assert torch.isfinite(out["loss"]) and "tail" in out


# ------------------------------------------------------------------------------------------- the docs
DOCS = Path(__file__).resolve().parents[1] / "docs" / "own_loop.md"


def python_blocks(path: Path) -> dict[str, str]:
    """The ```python blocks of a markdown page, keyed by the ``## `` section they sit in (first block each)."""
    blocks: dict[str, str] = {}
    section, inside, lines = "", False, []
    for line in path.read_text().splitlines():
        if line.startswith("## ") and not inside:
            section = line[3:].strip()
        elif line.strip() == "```python" and not inside:
            inside, lines = True, []
        elif line.strip() == "```" and inside:
            inside = False
            blocks.setdefault(section, "\n".join(lines))
        elif inside:
            lines.append(line)
    return blocks


def test_own_loop_page_plain_pytorch_example_runs(capsys):
    blocks = python_blocks(DOCS)
    for section in ("PyTorch Lightning", "Evaluating beside AutoAttack"):
        compile(blocks[section], f"{DOCS.name}: {section}", "exec")  # valid Python (Lightning is not installed)
    scope: dict = {}
    exec(compile(blocks["A plain PyTorch loop"], str(DOCS), "exec"), scope)
    res = scope["res"]
    assert set(res.accuracy) == {"clean", "pgd20", "worst_case"}
    assert res.accuracy["pgd20"] <= res.accuracy["clean"] and res.accuracy["clean"] > 30  # it learned something
    assert "tail" in res.groups["pgd20"] and "epoch 2: BSL loss on PGD-10 AEs" in capsys.readouterr().out


def test_ltrobust_and_timm_architectures_load_foreign_state_dicts(tmp_path, digit_folder):
    from ltrobust.evaluation.weights import build_weights_model
    from ltrobust.models.foreign import build_foreign
    from ltrobust.registry import MODELS

    torch.manual_seed(0)
    net = MODELS.build("mlp", num_classes=10, in_channels=3, width=16, image_size=8)
    plain = {k: v for k, v in net.state_dict().items() if not k.startswith("normalize.")}  # no buffers stored
    torch.save({"model_state_dict": {f"module._orig_mod.{k}": v for k, v in plain.items()}}, tmp_path / "m.pt")
    spec = {"weights": tmp_path / "m.pt", "model": "mlp", "options": {"width": 16}, "mean": [0.5] * 3, "std": [0.25] * 3}
    built = build_weights_model(spec, 10, 3, 8)
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(built(x), net.head(net.pool(net.backbone((x - 0.5) / 0.25))))
    with pytest.raises(ConfigError, match="has no option depthh; its options: cosine_gamma"):
        build_weights_model({**spec, "options": {"depthh": 3}}, 10, 3, 8)
    timm_net = build_foreign("timm.test_resnet", 10)
    torch.save(timm_net.state_dict(), tmp_path / "t.pt")
    loaded = build_weights_model({"weights": tmp_path / "t.pt", "model": "timm.test_resnet", "options": {}}, 10, 3, 8)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in timm_net.state_dict().items())


@pytest.mark.parametrize("arch, message", [
    ("torchvision.resnet_nope", "torchvision has no model 'resnet_nope'"),
    ("timm.nope_net", "timm has no model 'nope_net'"),
    ("no_such_module_14:build", "cannot import 'no_such_module_14'"),
    ("json:nope", "module 'json' has no 'nope'"),
    ("robustbench.cifar10", "robustbench.<dataset>.<threat>.<name>"),
])
def test_foreign_architecture_names_fail_with_the_fix(arch, message):
    from ltrobust.models.foreign import build_foreign

    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        build_foreign(arch, 10, weights="x.pt")
