"""The evaluation suite: per-sample robust flags, attacks in cascade, chunked and resumable (SPEC 4).

AutoAttack's bookkeeping: every test image carries a robust flag; the attacks of the suite run in the
order given, each on the images still robust after the previous ones (``mode=cascade``, the default;
``mode=standalone`` runs each attack on every clean-correct image so each column is that attack alone),
and the suite's robust accuracy is the per-sample worst case. The test set is processed in chunks; each
finished chunk is written atomically, so a killed evaluation resumes without redoing finished chunks.
Final evaluation always runs in float32 on the deployed logits (inference adjustments included).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .. import io
from ..attacks.pgd import eval_mode
from ..attacks.suite import AttackSpec, parse_attack, run_attack
from ..attacks.threat import threat_model
from ..errors import CheckpointError

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ sampling
def balanced_subset(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``n`` images spread evenly over classes (round-robin over seeded per-class orders).

    ``n <= 0`` or ``n >= len(labels)`` returns every index. The order interleaves classes, so the first
    ``k`` indices of a larger subset are themselves as balanced as possible.
    """
    labels = torch.as_tensor(labels).cpu()
    if n <= 0 or n >= len(labels):
        return torch.arange(len(labels))
    gen = torch.Generator().manual_seed(seed)
    per_class = [torch.nonzero(labels == c).squeeze(1) for c in torch.unique(labels).tolist()]
    per_class = [idx[torch.randperm(len(idx), generator=gen)] for idx in per_class]
    order = []
    depth = max(len(p) for p in per_class)
    for i in range(depth):
        order.extend(int(p[i]) for p in per_class if i < len(p))
        if len(order) >= n:
            break
    return torch.tensor(sorted(order[:n]), dtype=torch.long)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    with eval_mode(model):
        return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def _images(split: Any, idx: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Float images in [0, 1] and labels of ``split`` at ``idx`` on ``device``."""
    if hasattr(split, "get_batch"):  # streaming split (ImageNet-LT)
        x, y = split.get_batch(idx)
        return x.to(device), y.to(device)
    x = split.images[idx.to(split.images.device)].to(device).float() / 255.0
    return x, split.labels[idx.to(split.labels.device)].to(device)


def quick_robustness(model: nn.Module, split: Any, num_classes: int, attack_cfg: Any, steps: int = 10,
                     n_samples: int = 1000, seed: int = 0, batch_size: int = 256) -> dict[str, Any]:
    """Clean and PGD-``steps`` accuracy on a balanced sample (per-epoch validation; fp32)."""
    device = next(model.parameters()).device
    idx = balanced_subset(split.labels, n_samples, seed)
    threat = threat_model(attack_cfg.norm, attack_cfg.eps)
    clean_ok, rob_ok, labels = [], [], []
    gen = torch.Generator(device=device).manual_seed(seed)
    for i in range(0, len(idx), batch_size):
        x, y = _images(split, idx[i:i + batch_size], device)
        from ..attacks import pgd

        x_adv = pgd(model, x, y, threat, steps=steps, step_size=attack_cfg.step_size, generator=gen)
        clean_ok.append(predict(model, x) == y)
        rob_ok.append(predict(model, x_adv) == y)
        labels.append(y)
    c, r, y = torch.cat(clean_ok).cpu(), torch.cat(rob_ok).cpu(), torch.cat(labels).cpu()
    per_class_rob = [float(r[y == k].float().mean() * 100) if (y == k).any() else None for k in range(num_classes)]
    present = [k for k in range(num_classes) if (y == k).any()]
    return {
        "n": int(len(y)),
        "clean": float(c.float().mean() * 100),
        "rob": float(r.float().mean() * 100),
        "clean_balanced": float(np.mean([c[y == k].float().mean() * 100 for k in present])),
        "rob_balanced": float(np.mean([r[y == k].float().mean() * 100 for k in present])),
        "per_class_rob": per_class_rob,
        "steps": steps,
    }


# ------------------------------------------------------------------------------------- the suite
class Evaluation:
    """Run an attack suite on a test split, chunk by chunk, resumably.

    Args:
        model: the deployed model (inference adjustments applied), any device.
        split: test split (``images`` uint8 (N, C, H, W), ``labels``) or a streaming split.
        class_counts: training images per class (for head/body/tail groups).
        attacks: attack names (``clean, fgsm, pgd20, pgd100, mim20, cw20, cw100, aa, apgd, adaptive``).
        out_dir: folder for chunk files and the results (``<out_dir>/<tag>.json`` and ``.md``).
        mode: ``cascade`` (each attack on the images still robust) or ``standalone``.
    """

    def __init__(self, model: nn.Module, split: Any, class_counts: Sequence[int], attacks: Sequence[str],
                 out_dir: str | Path, tag: str = "eval", eps: float = 8 / 255, step_size: float = 2 / 255,
                 norm: str = "linf", batch_size: int = 256, chunk_size: int = 1000, n_samples: int = 0,
                 seed: int = 0, mode: str = "cascade", tail_group: int | None = None,
                 meta: dict[str, Any] | None = None, progress: bool = True) -> None:
        self.model = model
        self.split = split
        self.class_counts = list(class_counts)
        self.num_classes = len(self.class_counts)
        names = ["clean"] + [a for a in attacks if a != "clean"]
        self.specs = [parse_attack(a, eps=eps, step_size=step_size, norm=norm) for a in names]
        self.out_dir = Path(out_dir)
        self.tag = tag
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.seed = seed
        self.mode = mode
        self.tail_group = tail_group
        self.meta = meta or {}
        self.progress = progress
        self.indices = balanced_subset(split.labels, n_samples, seed)
        self.device = next(model.parameters()).device

    @property
    def chunk_dir(self) -> Path:
        return self.out_dir / f"{self.tag}_chunks"

    def _fingerprint(self) -> str:
        desc = json.dumps({"attacks": [s.__dict__ for s in self.specs], "mode": self.mode, "seed": self.seed,
                           "indices": hashlib.sha256(self.indices.numpy().tobytes()).hexdigest(),
                           "chunk": self.chunk_size}, sort_keys=True, default=str)
        return hashlib.sha256(desc.encode()).hexdigest()[:16]

    def run(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        fp = self._fingerprint()
        n = len(self.indices)
        chunks = [(s, min(s + self.chunk_size, n)) for s in range(0, n, self.chunk_size)]
        results = []
        t0 = time.perf_counter()
        bar = tqdm(total=len(chunks) * len(self.specs), desc=f"eval {self.tag}", disable=not self.progress,
                   leave=False, dynamic_ncols=True)
        for k, (a, b) in enumerate(chunks):
            path = self.chunk_dir / f"chunk_{k:05d}.json"
            done = self._load_chunk(path, fp)
            if done is None:
                done = self._run_chunk(self.indices[a:b], chunk_seed=self.seed + k, bar=bar)
                done["fingerprint"] = fp
                io.write_json(path, done)
            else:
                bar.update(len(self.specs))
            results.append(done)
        bar.close()
        out = self._aggregate(results)
        out["seconds"] = time.perf_counter() - t0
        io.write_json(self.out_dir / f"{self.tag}.json", out)
        io.atomic_write_text(self.out_dir / f"{self.tag}.md", markdown_table(out))
        return out

    def _load_chunk(self, path: Path, fp: str) -> dict[str, Any] | None:
        if not path.exists():
            return None
        try:
            data = io.read_json(path)
        except CheckpointError as exc:
            log.warning("redoing chunk %s: %s", path.name, exc)
            return None
        return data if data.get("fingerprint") == fp else None

    def _run_chunk(self, idx: torch.Tensor, chunk_seed: int, bar: Any) -> dict[str, Any]:
        flags: dict[str, list[bool]] = {}
        preds: dict[str, list[int]] = {}
        seconds: dict[str, float] = {s.name: 0.0 for s in self.specs}
        x_all, y_all = _images(self.split, idx, self.device)
        labels = y_all.tolist()
        clean_pred = predict(self.model, x_all, self.batch_size)
        robust = clean_pred == y_all  # (n,) running worst case
        clean_ok = robust.clone()
        for spec in self.specs:
            t = time.perf_counter()
            if spec.family == "clean":
                ok, pred = clean_ok, clean_pred
            else:
                todo = (robust if self.mode == "cascade" else clean_ok).nonzero().squeeze(1)
                pred = clean_pred.clone()
                ok = torch.zeros_like(robust)
                for j in range(0, len(todo), self.batch_size):
                    sel = todo[j:j + self.batch_size]
                    x_adv = run_attack(spec, self.model, x_all[sel], y_all[sel], seed=chunk_seed * 1000 + j,
                                       num_classes=self.num_classes)
                    _check_ball(spec, x_adv, x_all[sel])
                    p = predict(self.model, x_adv, self.batch_size)
                    pred[sel] = p
                    ok[sel] = p == y_all[sel]
                robust &= ok
            flags[spec.name] = ok.tolist()
            preds[spec.name] = pred.tolist()
            seconds[spec.name] += time.perf_counter() - t
            bar.update(1)
        flags["worst_case"] = robust.tolist()
        return {"indices": idx.tolist(), "labels": labels, "flags": flags, "preds": preds, "seconds": seconds}

    def _aggregate(self, chunks: list[dict[str, Any]]) -> dict[str, Any]:
        from .metrics import boundary_error, predicted_distribution, summarize

        y = np.concatenate([c["labels"] for c in chunks]).astype(np.int64)
        names = [s.name for s in self.specs] + ["worst_case"]
        per_attack = {}
        for name in names:
            correct = np.concatenate([c["flags"][name] for c in chunks]).astype(bool)
            res = summarize(correct, y, self.class_counts, self.num_classes, tail_group=self.tail_group)
            if name != "clean":
                clean = np.concatenate([c["flags"]["clean"] for c in chunks]).astype(bool)
                res["boundary_error"] = boundary_error(clean, correct)
                if name != "worst_case":
                    pred = np.concatenate([c["preds"][name] for c in chunks]).astype(np.int64)
                    res["predicted_distribution"] = predicted_distribution(pred[~correct], self.num_classes) \
                        if (~correct).any() else [0.0] * self.num_classes
                    res["seconds"] = float(sum(c["seconds"].get(name, 0.0) for c in chunks))
            per_attack[name] = res
        return {
            "tag": self.tag,
            "n": int(len(y)),
            "mode": self.mode,
            "attacks": [s.__dict__ | {"objective_kwargs": dict(s.objective_kwargs)} for s in self.specs],
            "results": per_attack,
            "class_counts": self.class_counts,
            "test_counts": np.bincount(y, minlength=self.num_classes).tolist(),
            "seed": self.seed,
            "versions": library_versions(),
            **self.meta,
        }


def _check_ball(spec: AttackSpec, x_adv: torch.Tensor, x: torch.Tensor) -> None:
    """Guard: an attack must return images inside its ball and inside [0, 1]."""
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if spec.norm == "linf" else d.norm(dim=1)
    if bool((size > spec.eps * (1 + 1e-4) + 1e-6).any()) or bool((x_adv < 0).any() | (x_adv > 1).any()):
        raise RuntimeError(f"attack {spec.name} returned images outside its eps-ball or [0, 1]; this is a bug.")


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("ltrobust", "torchvision", "numpy", "pyautoattack"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


# ---------------------------------------------------------------------------------------- tables
COLUMN_TITLES = {"clean": "Clean", "fgsm": "FGSM", "worst_case": "Worst case", "aa": "AA", "apgd": "APGD-CE+T",
                 "adaptive": "Adaptive x10", "square": "Square"}


def column_title(name: str) -> str:
    if name in COLUMN_TITLES:
        return COLUMN_TITLES[name]
    for fam, title in (("pgd", "PGD"), ("mim", "MIM"), ("cw", "CW"), ("adaptive", "Adaptive x10-")):
        if name.startswith(fam):
            return f"{title}-{name[len(fam):]}".replace("--", "-")
    return name


def markdown_table(result: dict[str, Any]) -> str:
    """The per-attack table (overall, balanced, head / body / tail, worst class) and per-class recall."""
    res = result["results"]
    names = list(res)
    lines = [f"# Evaluation `{result.get('tag', '')}`: {result['n']} test images, mode {result['mode']}", "",
             "| attack | overall | balanced | head | body | tail | tail group | worst class |",
             "|---|---|---|---|---|---|---|---|"]
    for name in names:
        r = res[name]
        worst = r.get("worst_class", {})
        lines.append(f"| {column_title(name)} | {r['accuracy']:.2f} | {r['balanced_accuracy']:.2f} | "
                     f"{_g(r, 'head')} | {_g(r, 'body')} | {_g(r, 'tail')} | {_g(r, 'tail_group')} | "
                     f"{worst.get('class', '-')} ({_num(worst.get('recall'))}) |")
    lines += ["", "Per-class recall (%), classes by training count:", "",
              "| attack | " + " | ".join(str(c) for c in range(len(result["class_counts"]))) + " |",
              "|---|" + "---|" * len(result["class_counts"]),
              "| train count | " + " | ".join(str(c) for c in result["class_counts"]) + " |"]
    for name in names:
        lines.append(f"| {column_title(name)} | " + " | ".join(f"{v:.1f}" if v is not None else "-"
                                                              for v in res[name]["per_class"]) + " |")
    if result.get("audit"):
        lines += ["", "Gradient-masking audit flags: " + (", ".join(result["audit"].get("flags", [])) or "none")]
    return "\n".join(lines) + "\n"


def _g(groups: dict[str, Any], key: str) -> str:
    return _num(groups.get(key), 2)


def _num(v: Any, digits: int = 1) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else "-"
