"""The evaluation suite: per-sample robust flags, attacks in cascade, chunked and resumable (SPEC 4).

AutoAttack's bookkeeping (Croce & Hein 2020): every test image carries a robust flag; the attacks of
the suite run in the order given, each on the images still robust after the previous ones
(``mode=cascade``, the default), and the suite's robust accuracy is the per-sample worst case. In
cascade mode the column of attack ``k`` is therefore the robust accuracy of the suite *up to* ``k``
(non-increasing along the suite); ``mode=standalone`` runs each attack on every clean-correct image, so
each column is that attack alone (the worst case is the same per-sample minimum).

The test set (or a balanced sample of ``n_samples`` images) is processed in chunks of ``chunk_size``
images. Each finished chunk is written atomically to ``<out_dir>/<tag>_chunks/chunk_NNNNN.json`` with a
fingerprint of everything that determines it (the attacks and their settings, the mode, the seed, the
sampled indices, the data's identity -- its resolved location and a hash of the selected test images and
labels --, the chunk size and a hash of the deployed model's weights, buffers and wrappers), so a
killed evaluation resumes without redoing finished chunks, and a chunk that is corrupt, truncated or
from other settings is recomputed. Final evaluation runs in float32 on the deployed logits (inference
adjustments included), and writes one JSON result (``<tag>.json``), its markdown table (``<tag>.md``) and
the per-sample flags and predictions (``<tag>_samples.npz``). Layout: ``docs/evaluation.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .. import io
from ..attacks.pgd import eval_mode, pgd
from ..attacks.suite import AttackSpec, column_title, parse_attack, run_attack
from ..attacks.threat import threat_model
from ..device import flush_denormals
from ..errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

__all__ = ["Evaluation", "attack_flags", "balanced_subset", "column_title", "data_identity", "library_versions",
           "markdown_table", "model_fingerprint", "model_title", "predict", "quick_robustness", "summary_table"]


# ------------------------------------------------------------------------------------ sampling
def balanced_subset(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``n`` images spread evenly over classes (round-robin over seeded per-class orders).

    ``n <= 0`` or ``n >= len(labels)`` returns every index. The order interleaves classes, so the first
    ``k`` indices of a larger subset are themselves as balanced as possible. Returned sorted.
    """
    labels = torch.as_tensor(labels).cpu()
    if n <= 0 or n >= len(labels):
        return torch.arange(len(labels))
    gen = torch.Generator().manual_seed(seed)
    per_class = [torch.nonzero(labels == c).squeeze(1) for c in torch.unique(labels).tolist()]
    per_class = [idx[torch.randperm(len(idx), generator=gen)] for idx in per_class]
    order: list[int] = []
    depth = max(len(p) for p in per_class)
    for i in range(depth):
        order.extend(int(p[i]) for p in per_class if i < len(p))
        if len(order) >= n:
            break
    return torch.tensor(sorted(order[:n]), dtype=torch.long)


#: the prediction recorded for an image whose logits hold a NaN or an infinity: no class, so it is never correct
NO_CLASS = -1


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Predicted classes (N,) of images ``x`` (N, C, H, W), in eval mode (the model's mode restored).

    An image whose logits are not all finite gets :data:`NO_CLASS` (-1), so it counts as misclassified
    (``argmax`` would name class 0, or the NaN's position, as if it were a prediction)."""
    with eval_mode(model):
        return torch.cat([_argmax_finite(model(x[i:i + batch_size])) for i in range(0, len(x), batch_size)])


def _argmax_finite(logits: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(logits).all(1), logits.argmax(1), torch.full_like(logits[:, 0], NO_CLASS,
                                                                                         dtype=torch.long))


def images_of(split: Any, idx: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 images in [0, 1] (B, C, H, W) and labels (B,) of ``split`` at ``idx``, on ``device``."""
    if hasattr(split, "get_batch"):  # streaming split (ImageNet-LT)
        x, y = split.get_batch(idx)
        return x.to(device, torch.float32), y.to(device)
    x = split.images[idx.to(split.images.device)].to(device).float() / 255.0
    return x, split.labels[idx.to(split.labels.device)].to(device)


_images = images_of  # earlier name, kept for callers


def derive_seed(*parts: Any) -> int:
    """A seed in [0, 2**31) that is a pure function of ``parts`` (e.g. ``(seed, chunk, attack, batch)``)."""
    digest = hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2 ** 31)


def data_identity(split: Any, idx: torch.Tensor, source: Any = None) -> dict[str, Any]:
    """What identifies the evaluated test data: ``source`` (the data set's record, e.g. ``{"format": ...,
    "path": ...}``, with the path resolved) and the SHA-256 of the selected images and labels (in-memory
    splits; a streamed split hashes its file paths, sizes and modification times instead of decoding
    every image)."""
    src = dict(source) if isinstance(source, dict) else ({"name": str(source)} if source is not None else {})
    if src.get("path"):
        src["path"] = str(Path(src["path"]).expanduser().resolve())
    h = hashlib.sha256()
    labels = split.labels[idx.to(split.labels.device)].cpu()
    h.update(labels.numpy().astype(np.int64).tobytes())
    if hasattr(split, "paths"):  # streaming split (ImageNet-LT)
        for i in idx.tolist():
            p = Path(split.paths[i])
            st = p.stat() if p.exists() else None
            h.update(f"{p.resolve()}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}\n".encode())
        what = "paths, sizes and mtimes"
    else:
        h.update(split.images[idx.to(split.images.device)].contiguous().cpu().numpy().tobytes())
        what = "images and labels"
    return {"source": src, "sha256": h.hexdigest(), "hashed": what}


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's parameters, all buffers (non-persistent ones included, e.g. a logit
    adjustment's offsets) and its ``repr`` (wrappers and their settings): chunks computed for other
    weights are never reused."""
    h = hashlib.sha256(repr(model).encode())
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    for name, t in tensors:
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def strict_fp32():
    """Switch TF32 off (cuDNN convolutions and CUDA matmuls) inside the block; restore it after."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def quick_robustness(model: nn.Module, split: Any, num_classes: int, attack_cfg: Any, steps: int = 10,
                     n_samples: int = 1000, seed: int = 0, batch_size: int = 256) -> dict[str, Any]:
    """Clean and PGD-``steps`` accuracy on a balanced sample (per-epoch validation; fp32).

    Returns ``{"n", "clean", "rob", "clean_balanced", "rob_balanced", "per_class_clean", "per_class_rob",
    "steps"}``: percentages computed from integer counts (so 3 of 5 is exactly ``60.0``); the per-class lists
    are the recalls of :func:`~ltrobust.evaluation.metrics.per_class_recall`, ``None`` for a class absent
    from the sample, and the balanced accuracies their mean over the classes present.
    """
    from .metrics import per_class_recall

    device = next(model.parameters()).device
    flush_denormals(device)
    idx = balanced_subset(split.labels, n_samples, seed)
    threat = threat_model(attack_cfg.norm, attack_cfg.eps)
    clean_pred, rob_pred, labels = [], [], []
    gen = torch.Generator(device=device).manual_seed(seed)
    for i in range(0, len(idx), batch_size):
        x, y = images_of(split, idx[i:i + batch_size], device)
        x_adv = pgd(model, x, y, threat, steps=steps, step_size=attack_cfg.step_size, generator=gen)
        clean_pred.append(predict(model, x))
        rob_pred.append(predict(model, x_adv))
        labels.append(y)
    y = torch.cat(labels).cpu()
    out: dict[str, Any] = {"n": int(len(y))}
    for name, pred in (("clean", torch.cat(clean_pred).cpu()), ("rob", torch.cat(rob_pred).cpu())):
        per_class = per_class_recall(pred, y, num_classes)
        present = [v for v in per_class if v is not None]
        out[name] = 100.0 * int((pred == y).sum()) / max(len(y), 1)
        out[f"{name}_balanced"] = math.fsum(present) / len(present) if present else 0.0
        out[f"per_class_{name}"] = per_class
    out["steps"] = steps
    return out


# ------------------------------------------------------------------------------- one attack, flags
def attack_flags(spec: AttackSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, todo: torch.Tensor,
                 seed: int = 0, batch_size: int = 256, num_classes: int | None = None,
                 progress: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one resolved attack on the images selected by ``todo``, in batches.

    Args:
        spec: an :class:`~ltrobust.attacks.suite.AttackSpec` (``parse_attack("pgd20")``).
        model: the deployed model (attacked as served).
        x: images (N, C, H, W) in [0, 1]; y: labels (N,).
        todo: (N,) bool, the images to attack (e.g. those still robust).
        seed: base seed; batch ``j`` uses ``derive_seed(seed, j)``.
        batch_size: images per attack call.
        num_classes: C (passed on to the attack).
        progress: an :class:`~.progress.EvalProgress` told of each finished batch (and of AutoAttack's
            stages); ``None``: nothing is reported.

    Returns:
        ``(correct, pred)``: (N,) bool, True where the image was attacked and its adversarial example is
        still classified correctly (False where not attacked), and (N,) int64, the class predicted on the
        adversarial example where attacked, -1 elsewhere.

    Every adversarial example is checked to lie in its eps-ball and in [0, 1] (a bug otherwise).
    """
    correct = torch.zeros_like(todo, dtype=torch.bool)
    pred = torch.full_like(y, -1)
    idx = todo.nonzero().squeeze(1)
    for j in range(0, len(idx), batch_size):
        sel = idx[j:j + batch_size]
        x_adv = run_attack(spec, model, x[sel], y[sel], seed=derive_seed(seed, j), num_classes=num_classes,
                           aa_events=progress.autoattack if progress is not None else None)
        _check_ball(spec, x_adv, x[sel])
        p = predict(model, x_adv, batch_size)
        pred[sel] = p
        correct[sel] = p == y[sel]
        if progress is not None:
            progress.batch_done(len(sel))
    return correct, pred


def _check_ball(spec: AttackSpec, x_adv: torch.Tensor, x: torch.Tensor) -> None:
    """Guard: an attack must return images inside its ball and inside [0, 1]."""
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if spec.norm == "linf" else d.norm(dim=1)
    if bool((size > spec.eps * (1 + 1e-4) + 1e-6).any()) or bool((x_adv < 0).any() | (x_adv > 1).any()):
        raise RuntimeError(f"attack {spec.name} returned images outside its eps-ball or [0, 1]; this is a bug.")


# ------------------------------------------------------------------------------------- the suite
class Evaluation:
    """Run an attack suite on a test split, chunk by chunk, resumably (SPEC 4).

    Args:
        model: the deployed model (inference adjustments applied), any device; attacked in eval mode.
        split: test split (``images`` uint8 (N, C, H, W), ``labels``) or a streaming split.
        class_counts: training images per class (they define head / body / tail and the other groups);
            ``None``: unknown, those groups are left out (then ``num_classes`` is required).
        attacks: attack names in cascade order (``clean, fgsm, pgd20, pgd100, mim20, cw20, cw100, aa,
            apgd, square, adaptive``; ``-l2`` suffix for the l_2 ball). ``clean`` always comes first.
        out_dir: folder of the chunk files and the results (``<out_dir>/<tag>.json``, ``.md``,
            ``_samples.npz``).
        tag: result name (``best``, ``last-logit_adjust1``, ...). Default: ``eval``.
        eps, step_size, norm: threat model and PGD step of the suite (pixel units). Defaults: 8/255,
            2/255, ``linf``.
        batch_size: images per attack call. Default: 256.
        chunk_size: images per resumable chunk. Default: 1000.
        n_samples: evaluate a class-balanced sample of this many test images (0: all). Default: 0.
        seed: seed of the sample and of every attack's randomness. Default: 0.
        mode: ``cascade`` (each attack on the images still robust) or ``standalone``. Default: cascade.
        tail_group: classes of the T-Clean / T-PGD tail group; ``None``: ``max(1, C // 10)``.
        meta: extra keys copied into the result (run folder, config, audit flags, ...).
        progress: show a progress bar (the images each attack has done, the estimated time left; see
            :mod:`~.progress`). Default: True.
        num_classes: C, when ``class_counts`` is ``None``.
        data_source: where the test data came from (the data set's ``manifest["source"]``); with a hash of
            the selected images it is part of the chunk fingerprint, so other data is never served old
            numbers. Default: None (the image hash alone).

    Example::

        ev = Evaluation(deployed, data.test, data.class_counts, ["pgd20", "aa"], "runs/r/eval", tag="best")
        result = ev.run()
        result["results"]["worst_case"]["balanced_accuracy"]
    """

    def __init__(self, model: nn.Module, split: Any, class_counts: Sequence[int] | None, attacks: Sequence[str],
                 out_dir: str | Path, tag: str = "eval", eps: float = 8 / 255, step_size: float = 2 / 255,
                 norm: str = "linf", batch_size: int = 256, chunk_size: int = 1000, n_samples: int = 0,
                 seed: int = 0, mode: str = "cascade", tail_group: int | None = None,
                 meta: dict[str, Any] | None = None, progress: bool = True, num_classes: int | None = None,
                 data_source: Any = None) -> None:
        if mode not in ("cascade", "standalone"):
            raise ConfigError(f"mode={mode!r}: use cascade or standalone.")
        if batch_size < 1 or chunk_size < 1:
            raise ConfigError("evaluation batch_size and chunk_size must be >= 1.")
        self.model = model
        self.split = split
        if class_counts is None and num_classes is None:
            raise ConfigError("Evaluation needs class_counts (training images per class) or num_classes.")
        self.class_counts = None if class_counts is None else [int(c) for c in class_counts]
        self.num_classes = int(num_classes) if num_classes is not None else len(self.class_counts or ())
        if self.class_counts is not None and len(self.class_counts) != self.num_classes:
            raise ConfigError(f"class_counts has {len(self.class_counts)} entries for {self.num_classes} classes.")
        names: list[str] = ["clean"]
        for a in attacks:
            a = a.strip().lower()
            if a in names:
                if a != "clean":
                    log.warning("attack %s is listed twice; it runs once.", a)
                continue
            names.append(a)
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
        self.progress_log: list[tuple[float, float | None]] = []  #: (elapsed, estimated seconds left) of the last run
        self.indices = balanced_subset(split.labels, n_samples, seed)
        self.device = next(model.parameters()).device
        self.data = data_identity(split, self.indices, data_source)

    @property
    def chunk_dir(self) -> Path:
        return self.out_dir / f"{self.tag}_chunks"

    def chunk_path(self, k: int) -> Path:
        return self.chunk_dir / f"chunk_{k:05d}.json"

    def settings(self) -> dict[str, Any]:
        """What the numbers were computed with, apart from the weights: attacks (threat model included),
        mode, seed, the sample and the data's identity (stored in the result as ``settings``)."""
        return {"attacks": [_spec_dict(s) for s in self.specs], "mode": self.mode, "seed": self.seed,
                "n": len(self.indices), "indices": hashlib.sha256(self.indices.numpy().tobytes()).hexdigest(),
                "data": self.data}

    def fingerprint(self) -> str:
        """Hash of everything that determines a chunk's content (see the module docstring)."""
        desc = json.dumps({**self.settings(), "chunk": self.chunk_size, "model": model_fingerprint(self.model)},
                          sort_keys=True, default=str)
        return hashlib.sha256(desc.encode()).hexdigest()[:16]

    _fingerprint = fingerprint

    def chunks(self) -> list[tuple[int, int]]:
        n = len(self.indices)
        return [(s, min(s + self.chunk_size, n)) for s in range(0, n, self.chunk_size)]

    def run(self) -> dict[str, Any]:
        """Evaluate every chunk not already on disk, then aggregate and write the result files.

        Runs in true fp32: TF32 convolutions and matmuls are switched off for the evaluation. Holds
        ``<out_dir>/.<tag>.lock`` meanwhile, so two processes never write the same tag's chunks.
        """
        flush_denormals(self.device)
        with io.run_lock(self.out_dir / f".{self.tag}.lock", f"eval {self.tag}"), strict_fp32():
            return self._run()

    def _run(self) -> dict[str, Any]:
        from .progress import EvalProgress

        fp = self.fingerprint()
        chunks = self.chunks()
        stored = [self._load_chunk(self.chunk_path(k), fp, self.indices[a:b]) for k, (a, b) in enumerate(chunks)]
        todo = [b - a for (a, b), done in zip(chunks, stored) if done is None]
        results, reused = [], len(chunks) - len(todo)
        t0 = time.perf_counter()
        what = self.meta.get("model_name") or (f"{Path(str(self.meta['run'])).name} {self.tag}"
                                                 if self.meta.get("run") else self.tag)
        with EvalProgress(self.model, self.specs, self.num_classes, todo, len(self.indices), self.mode,
                          f"eval {what}", self.progress) as bar:
            self.progress_log = bar.history  # (elapsed, estimated seconds left) at each redraw
            for k, ((a, b), done) in enumerate(zip(chunks, stored)):
                if done is None:
                    bar.begin_chunk(b - a)
                    done = self._run_chunk(self.indices[a:b], k, bar)
                    done["fingerprint"] = fp
                    io.write_json(self.chunk_path(k), done)
                    bar.end_chunk()
                results.append(done)
        if reused:
            log.info("eval %s: %d of %d chunks reused from %s", self.tag, reused, len(chunks), self.chunk_dir)
        out = self._aggregate(results)
        out.update(fingerprint=fp, settings=self.settings(), chunks=len(chunks), chunks_reused=reused,
                   seconds=round(time.perf_counter() - t0, 3), samples=f"{self.tag}_samples.npz")
        self._write_samples(results)
        io.write_json(self.out_dir / f"{self.tag}.json", out)
        io.atomic_write_text(self.out_dir / f"{self.tag}.md", markdown_table(out))
        return out

    # ------------------------------------------------------------------------------ chunks
    def _load_chunk(self, path: Path, fp: str, idx: torch.Tensor) -> dict[str, Any] | None:
        """A finished chunk from disk, or ``None`` when it is absent, corrupt or from other settings."""
        if not path.exists():
            return None
        try:
            data = io.read_json(path)
        except CheckpointError as exc:
            log.warning("redoing chunk %s: %s", path.name, exc)
            return None
        if data.get("fingerprint") != fp:
            log.info("redoing chunk %s: it was computed with other settings or weights", path.name)
            return None
        names = [s.name for s in self.specs] + ["worst_case"]
        n = len(idx)
        ok = (data.get("indices") == idx.tolist() and len(data.get("labels", ())) == n
              and all(len(data.get("flags", {}).get(k, ())) == n for k in names)
              and all(len(data.get("preds", {}).get(k, ())) == n for k in names))
        if not ok:
            log.warning("redoing chunk %s: its content is incomplete", path.name)
            return None
        return data

    def _run_chunk(self, idx: torch.Tensor, k: int, bar: Any) -> dict[str, Any]:
        """Flags and predictions of every attack on the images ``idx`` (one chunk)."""
        flags: dict[str, list[bool]] = {}
        preds: dict[str, list[int]] = {}
        seconds: dict[str, float] = {}
        x, y = images_of(self.split, idx, self.device)
        x = x.float()
        t = time.perf_counter()
        bar.begin_attack(self.specs[0], len(idx))  # clean, always first
        clean_pred = predict(self.model, x, self.batch_size)
        clean_ok = clean_pred == y
        nonfinite = {"clean": int((clean_pred == NO_CLASS).sum())}  # images whose logits hold a NaN / inf
        robust = clean_ok.clone()  # (n,) running per-sample worst case
        suite_pred = clean_pred.clone()  # (n,) prediction of the first AE that fooled the model, else clean
        n_clean = int(clean_ok.sum())
        bar.end_attack(n_clean)
        for a, spec in enumerate(self.specs):
            if spec.family == "clean":
                ok, pred = clean_ok, clean_pred
            else:
                t = time.perf_counter()
                todo = robust if self.mode == "cascade" else clean_ok
                bar.begin_attack(spec, int(todo.sum()))
                ok, ae_pred = attack_flags(spec, self.model, x, y, todo, seed=derive_seed(self.seed, k, spec.name),
                                           batch_size=self.batch_size, num_classes=self.num_classes, progress=bar)
                nonfinite[spec.name] = int((todo & (ae_pred == NO_CLASS)).sum())
                newly = robust & todo & ~ok  # fooled for the first time, by this attack
                suite_pred = torch.where(newly, ae_pred, suite_pred)
                robust = robust & ok
                # cascade: the suite up to this attack; standalone: this attack alone on clean-correct images
                pred = suite_pred.clone() if self.mode == "cascade" else torch.where(todo, ae_pred, clean_pred)
                ok = robust.clone() if self.mode == "cascade" else ok
            flags[spec.name] = ok.tolist()
            preds[spec.name] = pred.tolist()
            seconds[spec.name] = round(time.perf_counter() - t, 3)  # ms: no float noise in the JSON
            if spec.family != "clean":
                bar.end_attack(int(robust.sum()) if self.mode == "cascade" else n_clean)
        flags["worst_case"] = robust.tolist()
        preds["worst_case"] = suite_pred.tolist()
        return {"indices": idx.tolist(), "labels": y.tolist(), "flags": flags, "preds": preds, "seconds": seconds,
                "nonfinite": nonfinite}

    def _write_samples(self, chunks: list[dict[str, Any]]) -> None:
        """Per-sample flags and predictions as ``<tag>_samples.npz`` (rows in the order of ``names``)."""
        names = [s.name for s in self.specs] + ["worst_case"]
        arrays = {
            "indices": np.concatenate([c["indices"] for c in chunks]).astype(np.int64),
            "labels": np.concatenate([c["labels"] for c in chunks]).astype(np.int64),
            "names": np.array(names),
            "flags": np.stack([np.concatenate([c["flags"][m] for c in chunks]).astype(bool) for m in names]),
            "preds": np.stack([np.concatenate([c["preds"][m] for c in chunks]).astype(np.int64) for m in names]),
        }
        io.write_npz(self.out_dir / f"{self.tag}_samples.npz", arrays)

    # --------------------------------------------------------------------------- aggregate
    def _aggregate(self, chunks: list[dict[str, Any]]) -> dict[str, Any]:
        from .metrics import boundary_error, predicted_distribution, summarize

        y = np.concatenate([c["labels"] for c in chunks]).astype(np.int64)
        names = [s.name for s in self.specs] + ["worst_case"]
        clean = np.concatenate([c["flags"]["clean"] for c in chunks]).astype(bool)
        per_attack = {}
        for name in names:
            correct = np.concatenate([c["flags"][name] for c in chunks]).astype(bool)
            pred = np.concatenate([c["preds"][name] for c in chunks]).astype(np.int64)
            res = summarize(correct, y, self.class_counts, self.num_classes, tail_group=self.tail_group)
            named = pred != NO_CLASS  # images with NaN / inf logits predict no class: left out of the distribution
            dist = predicted_distribution(pred[named], self.num_classes, y[named]) if named.any() else None
            fooled = clean & ~correct & named
            if dist is not None:
                dist["fooled"] = (predicted_distribution(pred[fooled], self.num_classes)["overall"]
                                  if fooled.any() else None)
            res["predicted_distribution"] = dist
            if name != "clean":
                res["boundary_error"] = boundary_error(clean, correct)
            if name != "worst_case":
                res["seconds"] = round(math.fsum(c["seconds"].get(name, 0.0) for c in chunks), 3)
            per_attack[name] = res
        out: dict[str, Any] = {
            "tag": self.tag,
            "n": int(len(y)),
            "mode": self.mode,
            "attack_names": [s.name for s in self.specs],
            "attacks": [_spec_dict(s) for s in self.specs],
            "results": per_attack,
            "class_counts": self.class_counts,
            "test_counts": np.bincount(y, minlength=self.num_classes).tolist(),
            "seed": self.seed,
            "chunk_size": self.chunk_size,
            "versions": library_versions(),
        }
        nonfinite = {s.name: sum(int((c.get("nonfinite") or {}).get(s.name, 0)) for c in chunks) for s in self.specs}
        nonfinite = {k: v for k, v in nonfinite.items() if v}
        if nonfinite:
            out["nonfinite_logits"] = nonfinite
            log.warning("eval %s: the model returned NaN or infinite logits for %s of %d images; they count as "
                        "misclassified", self.tag, ", ".join(f"{v} ({column_title(k)})" for k, v in nonfinite.items()),
                        len(y))
        aa_versions = sorted({s.aa_version for s in self.specs if s.aa_version})
        if aa_versions:
            from ..attacks.autoattack import autoattack_plan, autoattack_version

            out["autoattack"] = {**autoattack_version(),
                                 "plans": {v: autoattack_plan(self.num_classes, v) for v in aa_versions}}
        return {**out, **self.meta}


def _spec_dict(spec: AttackSpec) -> dict[str, Any]:
    d = dict(spec.__dict__)
    d["objective_kwargs"] = dict(spec.objective_kwargs)
    return d


def library_versions() -> dict[str, str]:
    """Python, torch and the installed versions of ltrobust, torchvision, numpy and pyautoattack."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("ltrobust", "torchvision", "numpy", "pyautoattack"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


# ---------------------------------------------------------------------------------------- tables
def model_title(result: dict[str, Any]) -> str:
    """What was evaluated, in words: the model's name (``mlp-3f2a9c1b``), or the run folder's name, its
    checkpoint and epoch (``runs/at_bsl (best.pt, epoch 7 of 10)``), marked when training did not finish."""
    if result.get("model_name"):
        return str(result["model_name"])
    run = result.get("run")
    if not run:
        return "?"
    text = f"{Path(str(run)).name}"
    training = result.get("training") or {}
    if result.get("checkpoint"):
        epoch = result.get("checkpoint_epoch")
        of = f" of {training['epochs']}" if training.get("epochs") else ""
        # epochs are numbered from 0 in metrics.jsonl; "epoch 7 of 10" counts from 1
        when = f", epoch {int(epoch) + 1}{of}" if isinstance(epoch, int) and epoch >= 0 else ""
        text += f" ({Path(str(result['checkpoint'])).name}{when})"
    if training and not training.get("finished", True):
        text += f" UNFINISHED: trained {training.get('epochs_done', '?')} of {training.get('epochs', '?')} epochs"
    return text


def summary_table(result: dict[str, Any]) -> str:
    """The short table of an evaluation: accuracy, balanced accuracy, tail (the tail third by training
    count; ``-`` without class counts) and the worst class per attack, under a line naming the model, the
    images and the threat model. ``print(ltrobust.evaluate(...))`` shows it."""
    from ..config import fmt_fraction

    first = next((a for a in result.get("attacks", []) if a.get("name") != "clean"), None)
    threat = f", {first['norm']} eps {fmt_fraction(first['eps'])}" if first else ""
    lines = [f"{model_title(result)}: {result.get('n', '?')} test images, {result.get('mode', 'cascade')}{threat}"]
    rows = [("attack", "accuracy", "balanced", "tail", "worst class")]
    for name, r in result["results"].items():
        worst = r.get("worst_class") or {}
        rows.append((column_title(name), _num(r.get("accuracy"), 2), _num(r.get("balanced_accuracy"), 2),
                     _num(r.get("tail"), 2), f"{worst.get('class', '-')} ({_num(worst.get('recall'))})"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        lines.append("  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]))
    notes = []
    if result.get("nonfinite_logits"):
        notes.append("NaN / infinite logits counted as wrong: " + ", ".join(
            f"{column_title(k)} {v}" for k, v in result["nonfinite_logits"].items()))
    if result.get("groups_note"):
        notes.append("tail: needs class_counts")
    notes.append("full result: .result; .per_class, .groups, .robust; .to_pandas(), .to_csv(), .save(dir)")
    return "\n".join(lines + notes)


def markdown_table(result: dict[str, Any]) -> str:
    """The result as markdown: per-attack table (overall, balanced, head / body / tail, many / medium /
    few where present, tail group, worst class, boundary error), per-class recall, where adversarial
    examples are sent, and the gradient-masking audit flags when the result carries them."""
    res = result["results"]
    names = list(res)
    groups = [g for g in ("head", "body", "tail", "many", "medium", "few", "tail_group")
              if any(g in res[n] for n in names)]
    titles = {"tail_group": "tail group"}
    mode = result.get("mode", "cascade")
    lines = [f"# Evaluation `{result.get('tag', '')}` of {model_title(result)}: {result['n']} test images, "
             f"mode {mode}", ""]
    training = result.get("training") or {}
    if training and not training.get("finished", True):
        lines += [f"**UNFINISHED RUN**: training stopped after {training.get('epochs_done', '?')} of "
                  f"{training.get('epochs', '?')} epochs; these numbers are not those of the configured run.", ""]
    if (result.get("collapse") or {}).get("collapsed"):
        lines += [f"**COLLAPSED RUN**: {result['collapse'].get('message', '')}", ""]
    if mode == "cascade":
        lines += ["Cascade: each column is the suite up to that attack (each attack ran on the images still "
                  "robust); the worst case is the per-sample minimum. Accuracies in %.", ""]
    else:
        lines += ["Standalone: each column is that attack alone on the clean-correct images; the worst case "
                  "is the per-sample minimum. Accuracies in %.", ""]
    if result.get("groups_note"):
        lines += [result["groups_note"], ""]
    if result.get("nonfinite_logits"):
        shown = ", ".join(f"{column_title(k)} {v}" for k, v in result["nonfinite_logits"].items())
        lines += [f"**NaN or infinite logits** (counted as misclassified), images per attack: {shown}.", ""]
    head = ["attack", "overall", "balanced", *(titles.get(g, g) for g in groups), "worst class", "boundary err."]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        r = res[name]
        worst = r.get("worst_class", {})
        cells = [column_title(name), _num(r["accuracy"], 2), _num(r["balanced_accuracy"], 2),
                 *(_num(r.get(g), 2) for g in groups), f"{worst.get('class', '-')} ({_num(worst.get('recall'))})",
                 _num(r.get("boundary_error"), 2)]
        lines.append("| " + " | ".join(cells) + " |")
    counts = result["class_counts"]
    num_classes = len(res[names[0]]["per_class"])
    lines += ["", "Per-class recall (%):", "",
              "| attack | " + " | ".join(str(c) for c in range(num_classes)) + " |",
              "|---|" + "---|" * num_classes]
    if counts is not None:
        lines.append("| train count | " + " | ".join(str(c) for c in counts) + " |")
    for name in names:
        lines.append(f"| {column_title(name)} | " + " | ".join(_num(v) for v in res[name]["per_class"]) + " |")
    fooled = [(n, res[n].get("predicted_distribution") or {}) for n in names if n != "clean"]
    fooled = [(n, d["fooled"]) for n, d in fooled if isinstance(d, dict) and d.get("fooled") is not None]
    if fooled:
        lines += ["", "Predicted classes of the adversarial examples that fool the model (% of them):", "",
                  "| attack | " + " | ".join(str(c) for c in range(num_classes)) + " |",
                  "|---|" + "---|" * num_classes]
        lines += [f"| {column_title(n)} | " + " | ".join(_num(v) for v in d) + " |" for n, d in fooled]
    audit = result.get("audit")
    if audit:
        flags = audit.get("flags", [])
        where = f" (audit of `{audit['tag']}`)" if audit.get("tag") else ""
        lines += ["", f"Gradient-masking audit{where} flags: " + (", ".join(flags) or "none")]
        for flag in flags:
            msg = (audit.get("messages") or {}).get(flag)
            if msg:
                lines.append(f"- {flag}: {msg}")
    return "\n".join(lines) + "\n"


def _num(v: Any, digits: int = 1) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"
