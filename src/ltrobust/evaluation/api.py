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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .. import io
from ..errors import DataError
from .evaluator import Evaluation, markdown_table

__all__ = ["EvalResult", "TensorSplit", "as_split", "evaluate"]

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


@dataclass
class EvalResult:
    """What :func:`evaluate` returns.

    Attributes:
        result: the full result, as ``ltrobust eval`` writes it to ``<tag>.json``.
        samples: per-sample arrays: ``indices``, ``labels`` (N,), ``names`` (attacks, then worst_case),
            ``flags`` (bool) and ``preds`` (the predicted class under each attack) of shape (A, N).
    """

    result: dict[str, Any]
    samples: dict[str, np.ndarray] = field(repr=False)

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

    def to_dict(self) -> dict[str, Any]:
        """Everything: the result, plus ``samples`` (indices, labels, and flags and predictions per attack)."""
        s = self.samples
        return {**self.result, "samples": {
            "indices": s["indices"].tolist(), "labels": s["labels"].tolist(),
            "flags": {str(n): f.tolist() for n, f in zip(s["names"], s["flags"])},
            "preds": {str(n): p.tolist() for n, p in zip(s["names"], s["preds"])}}}

    def save(self, out_dir: str | Path, tag: str | None = None) -> Path:
        """Write ``<tag>.json``, ``<tag>.md`` and ``<tag>_samples.npz`` (``ltrobust eval``'s files) into
        ``out_dir``; returns the JSON path."""
        tag = tag or self.result.get("tag", "eval")
        out = Path(out_dir)
        io.write_json(out / f"{tag}.json", {**self.result, "tag": tag, "samples": f"{tag}_samples.npz"})
        io.atomic_write_text(out / f"{tag}.md", markdown_table({**self.result, "tag": tag}))
        io.write_npz(out / f"{tag}_samples.npz", self.samples)
        return out / f"{tag}.json"


def evaluate(model: nn.Module, data: Any, *, class_counts: Sequence[int] | None = None,
             attacks: Sequence[str] = ("clean", "pgd20"), eps: float = 8 / 255, norm: str = "linf",
             step_size: float | None = None, n_samples: int | None = None, batch_size: int = 256,
             out_dir: str | Path | None = None, tag: str = "eval", seed: int = 0,
             device: str | torch.device | None = None, mode: str = "cascade", chunk_size: int = 1000,
             tail_group: int | None = None, progress: bool = True,
             meta: dict[str, Any] | None = None) -> EvalResult:
    """Evaluate ``model`` on ``data`` under an attack suite in cascade (SPEC 4), as ``ltrobust eval`` does.

    Args:
        model: any ``nn.Module`` mapping images (B, C, H, W) in [0, 1] to logits (B, K); attacked in eval
            mode, in float32 (its mode is restored). Moved to ``device`` when one is given.
        data: a ``DataLoader`` or ``Dataset`` yielding ``(image, label, ...)``, an ``(x, y)`` pair of tensors
            (float in [0, 1] or uint8), or an ltrobust split (``build_data(...).test``).
        class_counts: training images per class; they define head / body / tail, many / medium / few and
            the tail group. ``None``: those groups are left out and :attr:`EvalResult.note` says why.
        attacks: attack names in cascade order (``clean, fgsm, pgdK, mimK, cwK, aa, apgd, square,
            adaptive``, ``-l2`` suffix for the l_2 ball; ``docs/evaluation.md``). Default: clean, pgd20.
        eps: radius of the ball in pixel units. Default: 8/255.
        norm: ``linf`` or ``l2``. Default: linf.
        step_size: PGD / MIM / CW step; ``None``: ``eps / 4``.
        n_samples: evaluate a class-balanced sample of this many images; ``None``: all.
        batch_size: images per attack call. Default: 256.
        out_dir: where the chunks (resumable) and ``<tag>.json`` / ``.md`` / ``_samples.npz`` go; ``None``:
            nothing is written.
        tag: name of the result files. Default: eval.
        seed: seed of the sample and of every attack. Default: 0.
        device: where to run (``cuda``, ``cpu``, ...); ``None``: where the model is.
        mode: ``cascade`` or ``standalone`` (each attack on every clean-correct image).
        chunk_size: images per resumable chunk. Default: 1000.
        tail_group: classes in the tail group; ``None``: ``max(1, K // 10)``.
        progress: show a progress bar. Default: True.
        meta: extra keys copied into the result.

    Returns:
        :class:`EvalResult`: ``res.accuracy[attack]``, ``res.per_class[attack]``, ``res.groups[attack]``,
        ``res.robust[attack]`` (per-sample flags), ``res.to_dict()``, ``res.save(dir)``.

    Example::

        res = ltrobust.evaluate(model, (x_test, y_test), class_counts=[5000, 2997, ..., 50],
                                attacks=("clean", "pgd20", "aa"))
        print(res.accuracy["worst_case"], res.groups["aa"]["tail"])
    """
    from ..device import resolve_device

    if device is not None:
        model = model.to(resolve_device(str(device)))
    split = as_split(data, batch_size)
    num_classes = _check_model(model, split, class_counts)
    meta = dict(meta or {})
    if class_counts is None:
        meta["groups_note"] = NO_COUNTS_NOTE
    options = dict(eps=eps, step_size=eps / 4 if step_size is None else step_size, norm=norm, batch_size=batch_size,
                   chunk_size=chunk_size, n_samples=n_samples or 0, seed=seed, mode=mode, tail_group=tail_group,
                   meta=meta, progress=progress, num_classes=num_classes)
    with tempfile.TemporaryDirectory(prefix="ltrobust-eval-") if out_dir is None else contextlib.nullcontext(out_dir) as folder:
        ev = Evaluation(model, split, class_counts, attacks, folder, tag=tag, **options)
        if out_dir is not None:
            from .runs import refuse_overwrite

            refuse_overwrite(ev)  # a stored result of other settings is kept, never silently replaced
        result = ev.run()
        samples = io.read_npz(Path(folder) / result["samples"])
    return EvalResult(result=result, samples=samples)


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
