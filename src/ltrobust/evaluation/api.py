"""``ltrobust.evaluate``: the attack suite of ``ltrobust eval`` on any model and any data, from Python.

Any ``nn.Module`` that maps images in [0, 1] (normalisation inside the model) to logits is attacked as it
is; the data may be a DataLoader, a Dataset, an ``(x, y)`` pair (float in [0, 1] or uint8) or an ltrobust
split. The suite is :class:`~.evaluator.Evaluation` (attacks in cascade, per-sample flags, every metric of
``docs/evaluation_metrics.md``); with ``out_dir`` it is chunked and resumable and writes the files of
``ltrobust eval``, without it nothing is written unless :meth:`EvalResult.save` is called::

    import ltrobust
    res = ltrobust.evaluate(model, test_loader, class_counts=train_counts, attacks=("clean", "pgd20", "aa"))
    res.accuracy["aa"], res.groups["aa"]["tail"], res.per_class["worst_case"]
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .. import io
from ..errors import ConfigError, DataError
from .evaluator import Evaluation, markdown_table, model_fingerprint, summary_table

__all__ = ["EvalResult", "TensorSplit", "as_split", "check_options", "evaluate"]

#: Result keys of one attack that depend on the training counts per class.
COUNT_GROUPS = ("head", "body", "tail", "many", "medium", "few", "tail_group")
NO_COUNTS_NOTE = ("class_counts not given: head / body / tail, many / medium / few and the tail group need the "
                  "training images per class and are left out; pass class_counts=[n_0, n_1, ...] to get them.")


class TensorSplit:
    """Test images held in memory, float in [0, 1] or uint8 (N, C, H, W), with labels (N,), on the CPU."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        images, labels = torch.as_tensor(images).cpu(), torch.as_tensor(labels).cpu()
        if images.dim() != 4:
            raise DataError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}; add the channel "
                            "axis (x.unsqueeze(1) for grayscale) or permute (N, H, W, C) with x.permute(0, 3, 1, 2).")
        if labels.dim() != 1 or len(labels) != len(images):
            raise DataError(f"labels must be (N,) = ({len(images)},) class indices, got shape {tuple(labels.shape)}.")
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise DataError(f"labels must be integer class indices, got {labels.dtype}.")
        if len(images) == 0:
            raise DataError("the data holds no images.")
        if images.dtype != torch.uint8:
            if not images.is_floating_point():
                raise DataError(f"images must be float in [0, 1] or uint8, got {images.dtype}.")
            finite = torch.isfinite(images.flatten(1)).all(1)
            if not bool(finite.all()):
                bad = int((~finite).nonzero()[0, 0])
                raise DataError(f"image {bad} (label {int(labels[bad])}) holds NaN or infinite values, and "
                                f"{int((~finite).sum())} of {len(images)} images do: remove them or fix the data "
                                "pipeline; ltrobust evaluates images in [0, 1].")
            lo, hi = float(images.min()), float(images.max())
            if lo < 0 or hi > 1:
                raise DataError(f"images must lie in [0, 1] (got values in [{lo:.3g}, {hi:.3g}]): drop Normalize "
                                "from the data transform and put the normalisation inside the model, so eps is in "
                                "pixel units.")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def get_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[idx]
        return (x.float() / 255.0 if x.dtype == torch.uint8 else x.float()), self.labels[idx]


def as_split(data: Any, batch_size: int = 256) -> Any:
    """The test data as a split :class:`~.evaluator.Evaluation` reads: an ltrobust split as is, else a
    :class:`TensorSplit` of a DataLoader, a Dataset (items ``(image, label, ...)``) or an ``(x, y)`` pair."""
    if hasattr(data, "labels") and (hasattr(data, "images") or hasattr(data, "get_batch")):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], (tuple, list)):
        return TensorSplit(*data)
    from torch.utils.data import DataLoader, Dataset

    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        data = DataLoader(data, batch_size=batch_size, shuffle=False)
    if not isinstance(data, DataLoader):
        raise DataError(f"data is a {type(data).__name__}: pass a DataLoader, a Dataset or an (x, y) pair of "
                        "tensors.")
    xs, ys = [], []
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise DataError(f"the data yields {type(batch).__name__} batches; each must be (images, labels, ...).")
        xs.append(torch.as_tensor(batch[0]).cpu())
        ys.append(torch.as_tensor(batch[1]).cpu())
    if not xs:
        raise DataError("the data holds no images.")
    return TensorSplit(torch.cat(xs), torch.cat(ys))


@dataclass(repr=False)
class EvalResult:
    """What :func:`evaluate` returns. Printed, it is the short table of the command line (accuracy,
    balanced accuracy, tail and worst class per attack) naming the model; the full result is one
    attribute away.

    Attributes:
        result: the full result, as ``ltrobust eval`` writes it to ``<tag>.json``.
        samples: per-sample arrays: ``indices``, ``labels`` (N,), ``names`` (attacks, then worst_case),
            ``flags`` (bool) and ``preds`` (the predicted class under each attack, -1 where the logits
            were not finite) of shape (A, N).

    Example::

        res = ltrobust.evaluate(model, (x, y), attacks="clean,pgd20", name="my-cnn")
        print(res)                  # the short table
        res.accuracy["pgd20"], res.result["results"]["pgd20"]["per_class"]
        res.to_pandas()             # one row per attack (needs pandas)
        res.to_csv("my-cnn.csv")    # the same rows, no pandas needed
    """

    result: dict[str, Any]
    samples: dict[str, np.ndarray] = field(repr=False)

    def __repr__(self) -> str:
        return summary_table(self.result)

    __str__ = __repr__

    @property
    def name(self) -> str | None:
        """The evaluated model's name (``name=``, else its class name and a short hash of its weights)."""
        return self.result.get("model_name")

    @property
    def names(self) -> list[str]:
        """The attacks in cascade order, then ``worst_case``."""
        return list(self.result["results"])

    @property
    def accuracy(self) -> dict[str, float]:
        """Overall accuracy (%) under each attack in cascade (the suite up to it), plus ``worst_case``."""
        return {k: r["accuracy"] for k, r in self.result["results"].items()}

    @property
    def per_class(self) -> dict[str, list[float | None]]:
        """Per-class recall (%) under each attack (``None`` for a class without test images)."""
        return {k: r["per_class"] for k, r in self.result["results"].items()}

    @property
    def groups(self) -> dict[str, dict[str, Any]]:
        """Per attack: ``balanced``, ``head`` / ``body`` / ``tail``, ``many`` / ``medium`` / ``few``,
        ``tail_group`` (those that exist; none without class counts, see :attr:`note`) and ``worst_class``."""
        return {k: {"balanced": r["balanced_accuracy"], **{g: r[g] for g in COUNT_GROUPS if g in r},
                    "worst_class": r["worst_class"]} for k, r in self.result["results"].items()}

    @property
    def robust(self) -> dict[str, np.ndarray]:
        """Per-sample correctness (N,) bool under each attack in cascade (the images of :attr:`indices`)."""
        return {str(n): f for n, f in zip(self.samples["names"], self.samples["flags"])}

    @property
    def indices(self) -> np.ndarray:
        """Positions in the data of the evaluated images (all of them unless ``n_samples`` was set)."""
        return self.samples["indices"]

    @property
    def note(self) -> str | None:
        """Why groups are missing (no class counts), else ``None``."""
        return self.result.get("groups_note")

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per attack (then ``worst_case``): model, attack, n, accuracy, balanced_accuracy, the
        class groups that exist, worst class and its recall, boundary error, seconds; what :meth:`to_pandas`
        and :meth:`to_csv` hold."""
        out = []
        for attack, r in self.result["results"].items():
            worst = r.get("worst_class") or {}
            row = {"model": self.name, "attack": attack, "n": r.get("n", self.result.get("n")),
                   "accuracy": r["accuracy"], "balanced_accuracy": r["balanced_accuracy"],
                   **{g: r.get(g) for g in COUNT_GROUPS if any(g in v for v in self.result["results"].values())},
                   "worst_class": worst.get("class"), "worst_class_recall": worst.get("recall"),
                   "boundary_error": r.get("boundary_error"), "seconds": r.get("seconds")}
            out.append(row)
        return out

    def to_pandas(self) -> Any:
        """The rows of :meth:`rows` as a ``pandas.DataFrame`` indexed by attack (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise DataError("EvalResult.to_pandas() needs pandas, which is not installed: pip install pandas "
                            "(or use res.to_csv() / res.rows(), which need nothing).") from None
        return pd.DataFrame(self.rows()).set_index("attack")

    def to_csv(self, path: str | Path | None = None) -> str:
        """The rows of :meth:`rows` as CSV (full precision; no pandas needed). With ``path``, also written
        there (atomically). Returns the text."""
        import csv
        import io as text_io

        rows = self.rows()
        buf = text_io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows([{k: ("" if v is None else v) for k, v in row.items()} for row in rows])
        text = buf.getvalue()
        if path is not None:
            io.atomic_write_text(Path(path), text)
        return text

    def to_dict(self) -> dict[str, Any]:
        """Everything: the result, plus ``samples`` (indices, labels, and flags and predictions per attack)."""
        s = self.samples
        return {**self.result, "samples": {
            "indices": s["indices"].tolist(), "labels": s["labels"].tolist(),
            "flags": {str(n): f.tolist() for n, f in zip(s["names"], s["flags"])},
            "preds": {str(n): p.tolist() for n, p in zip(s["names"], s["preds"])}}}

    def save(self, out_dir: str | Path, tag: str | None = None) -> Path:
        """Write ``<tag>.json``, ``<tag>.md`` and ``<tag>_samples.npz`` (``ltrobust eval``'s files) into
        ``out_dir``; returns the JSON path. A stored result of another model in ``out_dir`` is kept: the
        call fails, naming both models."""
        from ..config import check_name
        from .runs import refuse_other_model

        tag = check_name("tag", tag or self.result.get("tag", "eval"))
        out = Path(out_dir)
        refuse_other_model(out / f"{tag}.json", self.result, "save into another folder, or delete it to replace it")
        io.write_json(out / f"{tag}.json", {**self.result, "tag": tag, "samples": f"{tag}_samples.npz"})
        io.atomic_write_text(out / f"{tag}.md", markdown_table({**self.result, "tag": tag}))
        io.write_npz(out / f"{tag}_samples.npz", self.samples)
        return out / f"{tag}.json"


def evaluate(model: nn.Module, data: Any, *, class_counts: Sequence[int] | None = None,
             attacks: Sequence[str] | str = ("clean", "pgd20"), eps: float = 8 / 255, norm: str = "linf",
             step_size: float | None = None, n_samples: int | None = None, batch_size: int = 256,
             out_dir: str | Path | None = None, tag: str = "eval", seed: int = 0,
             device: str | torch.device | None = None, mode: str = "cascade", chunk_size: int = 1000,
             tail_group: int | None = None, progress: bool = True, name: str | None = None,
             meta: dict[str, Any] | None = None) -> EvalResult:
    """Evaluate ``model`` on ``data`` under an attack suite in cascade (SPEC 4), as ``ltrobust eval`` does.

    Every argument is checked before any work, with the messages of ``ltrobust eval`` (``norm="L2"``, a
    negative ``step_size`` or ``n_samples``, an unknown attack fail at once).

    Args:
        model: any ``nn.Module`` with float32 parameters mapping images (B, C, H, W) in [0, 1] to logits
            (B, K); attacked in eval mode (its mode is restored). Moved to ``device`` when one is given.
            Logits holding a NaN or an infinity count as a wrong prediction (a warning says how many).
        data: a ``DataLoader`` or ``Dataset`` yielding ``(image, label, ...)``, an ``(x, y)`` pair of tensors
            (float in [0, 1] or uint8), or an ltrobust split (``build_data(...).test``). A NaN or infinite
            pixel is an error naming the first such image.
        class_counts: training images per class; they define head / body / tail, many / medium / few and
            the tail group. ``None``: those groups are left out and :attr:`EvalResult.note` says why.
        attacks: attack names in cascade order (``clean, fgsm, pgdK, mimK, cwK, aa, apgd, square,
            adaptive``, ``-l2`` suffix for the l_2 ball; ``docs/evaluation.md``), as a sequence or one
            comma-separated string (``"clean,pgd20,aa"``). Default: clean, pgd20.
        eps: radius of the ball in pixel units. Default: 8/255.
        norm: ``linf`` or ``l2``. Default: linf.
        step_size: PGD / MIM / CW step; ``None``: ``eps / 4``.
        n_samples: evaluate a class-balanced sample of this many images; ``None`` or 0: all.
        batch_size: images per attack call. Default: 256.
        out_dir: where the chunks (resumable) and ``<tag>.json`` / ``.md`` / ``_samples.npz`` go; ``None``:
            nothing is written. A result of another model already there is kept: the call fails.
        tag: name of the result files (a name, not a path). Default: eval.
        seed: seed of the sample and of every attack. Default: 0.
        device: where to run (``cuda``, ``cpu``, ...); ``None``: where the model is.
        mode: ``cascade`` or ``standalone`` (each attack on every clean-correct image).
        chunk_size: images per resumable chunk. Default: 1000.
        tail_group: classes in the tail group; ``None``: ``max(1, K // 10)``.
        progress: show a progress bar over the images with an estimate of the time left (tqdm: the widget
            in Jupyter, a text line elsewhere). Default: True.
        name: the model's name in the result, its printout and reports; ``None``: its class name and a
            short hash of its weights (``Sequential-3f2a9c1b``), so two models never share a name.
        meta: extra keys copied into the result.

    Returns:
        :class:`EvalResult`: ``print(res)`` (the short table), ``res.accuracy[attack]``,
        ``res.per_class[attack]``, ``res.groups[attack]``, ``res.robust[attack]`` (per-sample flags),
        ``res.result`` (everything), ``res.to_pandas()``, ``res.to_csv()``, ``res.save(dir)``.

    Example::

        res = ltrobust.evaluate(model, (x_test, y_test), class_counts=[5000, 2997, ..., 50],
                                attacks="clean,pgd20,aa", name="wrn-34-10")
        print(res)
        print(res.accuracy["worst_case"], res.groups["aa"]["tail"])
    """
    opts = check_options(attacks=attacks, eps=eps, norm=norm, step_size=step_size, n_samples=n_samples,
                         batch_size=batch_size, tag=tag, seed=seed, mode=mode, chunk_size=chunk_size,
                         tail_group=tail_group)
    if name is not None:
        from ..config import check_name

        check_name("name", name, "wrn-34-10")
    if not isinstance(model, nn.Module):
        raise DataError(f"model is a {type(model).__name__}: pass the torch.nn.Module to attack (load a state_dict "
                        "into its architecture first).")
    if device is not None:
        model = model.to(_device(device))
    _check_dtype(model)
    counts = _check_counts(class_counts)
    split = as_split(data, batch_size)
    # the attacks need gradients: a call inside torch.no_grad() or torch.inference_mode() still gets them
    with torch.inference_mode(False), torch.enable_grad():
        num_classes = _check_model(model, split, counts)
        fingerprint = model_fingerprint(model)
        meta = {"model_name": name or f"{type(model).__name__}-{fingerprint[:8]}", "model_fingerprint": fingerprint,
                **(meta or {})}
        if counts is None:
            meta["groups_note"] = NO_COUNTS_NOTE
        options = dict(eps=opts.eps, step_size=opts.step_size, norm=opts.norm, batch_size=opts.batch_size,
                       chunk_size=opts.chunk_size, n_samples=opts.n_samples, seed=opts.seed, mode=opts.mode,
                       tail_group=opts.tail_group or None, meta=meta, progress=progress, num_classes=num_classes)
        with tempfile.TemporaryDirectory(prefix="ltrobust-eval-") if out_dir is None else contextlib.nullcontext(out_dir) as folder:
            ev = Evaluation(model, split, counts, opts.attacks, folder, tag=opts.tag or "eval", **options)
            if out_dir is not None:
                from .runs import refuse_overwrite

                # a stored result of other settings or of another model is kept, never silently replaced
                refuse_overwrite(ev, same_model="evaluate this model into another out_dir, or delete it to replace it")
            result = ev.run()
            samples = io.read_npz(Path(folder) / result["samples"])
    return EvalResult(result=result, samples=samples)


def check_options(**options: Any) -> Any:
    """The evaluation options of :func:`evaluate` checked as ``ltrobust eval`` checks ``eval.*`` (same rules and
    messages, naming the keyword instead of the ``eval.`` key); returns them as an
    :class:`~ltrobust.config.EvalConfig` (``n_samples`` / ``tail_group`` ``None`` -> 0, ``step_size`` ``None``
    -> ``eps / 4``, ``attacks`` a comma-separated string or a sequence of names)."""
    from ..attacks.suite import check_attacks
    from ..config import from_flat

    attacks = options.pop("attacks")
    if isinstance(attacks, str):
        attacks = [a for a in attacks.split(",") if a.strip()]
    if (not isinstance(attacks, (list, tuple)) or not attacks
            or not all(isinstance(a, str) and a.strip() for a in attacks)):
        raise ConfigError(f"attacks={attacks!r}: give attack names in cascade order, e.g. "
                          "attacks=('clean', 'pgd20', 'aa') or attacks='clean,pgd20,aa'.")
    flat = {"eval.attacks": tuple(a.strip() for a in attacks)}
    step_size = options.pop("step_size")
    for key, value in options.items():
        flat[f"eval.{key}"] = 0 if value is None and key in ("n_samples", "tail_group") else value
    try:
        cfg = from_flat(flat).eval
        if step_size is not None:
            cfg = from_flat({**flat, "eval.step_size": step_size}).eval
        else:
            cfg = replace(cfg, step_size=cfg.eps / 4)
        check_attacks(cfg)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("eval.", "")) from None
    return cfg


def _device(device: Any) -> torch.device:
    from ..device import resolve_device

    try:
        return resolve_device(str(device))
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("train.device", "device")) from None


def _check_dtype(model: nn.Module) -> None:
    """Refuse a model whose parameters are not float32 (float64, bf16, fp16): the attacks, eps-ball checks and
    step sizes are float32 arithmetic on float32 images."""
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()
                     if p.is_floating_point() and p.dtype != torch.float32})
    if dtypes:
        raise DataError(f"{type(model).__name__} has {' and '.join(dtypes)} parameters; ltrobust attacks float32 "
                        "models (images, eps and step sizes are float32): pass model.float(), or a float32 copy, "
                        "copy.deepcopy(model).float().")


def _check_counts(class_counts: Any) -> list[int] | None:
    if class_counts is None:
        return None
    values = class_counts.tolist() if hasattr(class_counts, "tolist") else class_counts
    if (isinstance(values, (str, bytes)) or not hasattr(values, "__iter__")
            or not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c >= 0 for c in values)):
        raise ConfigError(f"class_counts={class_counts!r}: give the training images per class as whole numbers "
                          ">= 0, e.g. class_counts=[500, 120, 30].")
    return [int(c) for c in values]


def _check_model(model: nn.Module, split: Any, class_counts: Sequence[int] | None) -> int:
    """The number of classes K the model predicts, after checking it returns (B, K) logits that fit the labels."""
    from .evaluator import images_of

    try:
        device = next(model.parameters()).device
    except StopIteration:
        raise DataError(f"{type(model).__name__} has no parameters: ltrobust attacks a trainable nn.Module.") from None
    x, _ = images_of(split, torch.arange(1), device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except RuntimeError as exc:  # e.g. a 3-channel network on grey images: say so, with the fix
        from ..models.foreign import forward_error

        raise DataError(forward_error(exc, type(model).__name__, int(x.shape[1]), int(x.shape[-1]))) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        what = type(out).__name__ if not isinstance(out, torch.Tensor) else f"a tensor of shape {tuple(out.shape)}"
        raise DataError(f"{type(model).__name__} returned {what}; ltrobust attacks models that return logits "
                        "(B, num_classes): wrap it, e.g. nn.Sequential(model, PickLogits()), so forward returns them.")
    k = int(out.shape[1])
    if class_counts is not None and len(class_counts) != k:
        raise DataError(f"class_counts has {len(class_counts)} entries but the model predicts {k} classes.")
    top = int(split.labels.max())
    if top >= k or int(split.labels.min()) < 0:
        raise DataError(f"the labels reach {top} but the model predicts {k} classes (0..{k - 1}).")
    return k
