"""The progress bar of an evaluation: the images each attack has done and an honest estimate of the time left.

An evaluation's time is spent very unevenly: on a robust model AutoAttack's APGD-CE takes about 2% of
its time, APGD-T (100 iterations for each of up to 9 target classes) 10-25%, FAB-T 30-50% and Square
(5000 queries) 30-40%, and the cascade shrinks the set of images each attack runs on. A bar that counts
attacks, or images at a constant rate, is therefore wrong by several times (it was: 4-8x too low for
AutoAttack). The estimate here is built from what is known and what is measured:

- **Work** is counted in *image passes*: a forward hook on the attacked model counts every image it
  sees, one unit without gradients and :data:`GRAD_UNITS` (3: forward plus backward) with them.
- **What is left** is known per image from each attack's budget (:func:`attack_stages`: PGD-K needs K
  gradient passes, APGD-CE 101, APGD-T 101 per target class, FAB-T 100 per target with a gradient and a
  plain pass each, Square 5000 plain passes), times the images it will run on: the images still robust,
  known exactly once the attacks before it finish and taken as an upper bound (no further image broken)
  until then; within AutoAttack, from the robust accuracy the package reports after each of its attacks,
  and, for later batches, the share of images that reached each of its attacks in earlier batches.
- **Seconds per unit** are measured for each attack (and each AutoAttack stage) as it runs: they differ
  between attacks (FAB's projections, Square's per-query overhead) by up to about 5x on small models. An
  attack that has not started yet is priced at the average measured so far; once a few percent of its
  own work is done, at its own rate. Chunks still to do are priced by the finished ones.

The bar shows the share of the estimated total time spent, the attack that runs with the images it has
done (``PGD-20 256/453 img``), and ``elapsed<left``. ``docs/evaluation.md`` ("Progress") has the measured
accuracy of the estimate.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch
from torch import nn

#: units of one image pass with gradients (forward and backward, about three forwards)
GRAD_UNITS = 3.0
#: AutoAttack's checks before its attacks (randomness, output range, dynamic defence, clean accuracy), per image
AA_PRELUDE_UNITS = 6.0
#: image passes per image entering each AutoAttack attack (pyautoattack 0.2.0, standard settings: 100 iterations,
#: one restart, ``t`` target classes, 5000 Square queries), counted on digits with a forward hook
AA_UNITS: dict[str, Callable[[int], float]] = {
    "apgd-ce": lambda t: GRAD_UNITS * 101 + 2,
    "apgd-dlr": lambda t: GRAD_UNITS * 101 + 2,
    "apgd-t": lambda t: t * (GRAD_UNITS * 101 + 1) + 2,
    "fab-t": lambda t: t * (GRAD_UNITS * 100 + 103),
    "fab": lambda t: GRAD_UNITS * 100 + 103,
    "square": lambda t: 5004.0,
}
#: the bar: label, share of the estimated total time spent, then the attack, its images and elapsed<left
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {unit}"
#: seconds between two redraws of the bar
REDRAW_SECONDS = 0.5
#: share of an attack's predicted work it must have done before its own rate replaces the average rate
OWN_RATE_SHARE = 0.03


def attack_stages(spec: Any, num_classes: int) -> list[tuple[str, float]]:
    """``[(stage key, image-pass units per image entering it)]`` of one attack of the suite, in the order they
    run: one stage for clean and the PGD family, one per attack of AutoAttack (``aa/apgd-ce``, ``aa/apgd-t``,
    ...). The evaluator's prediction on each adversarial example (one plain pass) is included."""
    if spec.family == "clean":
        return [("clean", 1.0)]
    if spec.aa_version:
        from ..attacks.autoattack import autoattack_plan

        plan = autoattack_plan(num_classes, spec.aa_version)
        targets = int(plan["n_target_classes"])  # type: ignore[arg-type]
        stages = [(f"{spec.name}/{name}", AA_UNITS.get(name, AA_UNITS["fab"])(targets))
                  for name in plan["attacks"]]  # type: ignore[union-attr]
        if stages:
            stages[0] = (stages[0][0], stages[0][1] + AA_PRELUDE_UNITS + 1)
        return stages
    steps = max(1, int(spec.steps or 1))
    if spec.family == "cw_l2":
        steps *= int(dict(spec.objective_kwargs).get("binary_steps", 9))
    restarts = max(1, int(spec.restarts))
    return [(spec.name, GRAD_UNITS * steps * restarts + restarts)]


class EvalProgress:
    """The progress of one :class:`~.evaluator.Evaluation` run: a tqdm bar (the widget in Jupyter) and the
    estimate of the time left (see the module docstring).

    Args:
        model: the attacked model; a forward hook counts the image passes while the evaluation runs.
        specs: the suite's resolved attacks, in order.
        num_classes: C (AutoAttack's target count depends on it).
        chunks: the sizes of the chunks still to compute, in order.
        total_images: every image of the evaluation (reused chunks included).
        mode: ``cascade`` or ``standalone``.
        desc: the bar's label (``eval <model>``).
        enabled: draw the bar; without it the estimate is still kept (:attr:`history`).

    Attributes:
        history: ``[(elapsed seconds, estimated seconds left)]`` at each redraw.
    """

    def __init__(self, model: nn.Module, specs: Sequence[Any], num_classes: int, chunks: Sequence[int],
                 total_images: int, mode: str = "cascade", desc: str = "eval", enabled: bool = True) -> None:
        self.model = model
        self.specs = list(specs)
        self.stages = {s.name: attack_stages(s, num_classes) for s in self.specs}
        self.mode = mode
        self.desc = desc
        self.enabled = enabled
        self.pending = list(chunks)
        self.total_images = int(total_images)
        self.images_done = self.total_images - sum(self.pending)
        self.rates: dict[str, list[float]] = {}  #: stage key -> [seconds, units] measured
        self.survival: dict[str, list[float]] = {}  #: AA stage key -> [images entering it, images of the calls]
        self.finished_chunks: list[tuple[float, int]] = []  #: (seconds, images) of each computed chunk
        self.history: list[tuple[float, float | None]] = []
        self.units = 0.0
        self.t0 = self.last_draw = time.perf_counter()
        self.chunk_m = self.robust = 0
        self.finished_chunk = False
        self.chunk_t0 = self.t0
        self.attack: Any = None
        self.attack_n = self.attack_done = self.credited = 0
        self.stage_key: str | None = None
        self.stage_pred = 0.0
        self.stage_t0 = self.t0
        self.stage_u0 = 0.0
        self.call: dict[str, Any] | None = None
        self.bar: Any = None
        self._hook: Any = None
        self._redirect: Any = None

    # ------------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "EvalProgress":
        if self.enabled:  # progress=False leaves the model untouched
            self._hook = self.model.register_forward_hook(self._on_forward)
            from tqdm.auto import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            # log lines (AutoAttack's per-attack lines in the CLI) print above the bar instead of breaking it
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()
            self.bar = tqdm(total=100, desc=self.desc, leave=True, dynamic_ncols=True, unit="",
                            bar_format=BAR_FORMAT)
        self.t0 = self.last_draw = time.perf_counter()
        self.draw(self.t0)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._close_stage(time.perf_counter())
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.bar is not None:
            if exc[0] is None:
                titles = ", ".join(_title(s.name) for s in self.specs)
                self.bar.n = 100
                self._text(f"{self.total_images} img · {titles} · {_clock(time.perf_counter() - self.t0)}")
            self.bar.close()
            self.bar = None
        if self._redirect is not None:
            self._redirect.__exit__(*exc)
            self._redirect = None

    # --------------------------------------------------------------------------------- events
    def begin_chunk(self, m: int) -> None:
        """A chunk of ``m`` images starts (the next of :attr:`pending`)."""
        if self.pending:
            self.pending.pop(0)
        self.chunk_m = self.robust = int(m)
        self.finished_chunk = False
        self.chunk_t0 = time.perf_counter()

    def end_chunk(self) -> None:
        now = time.perf_counter()
        self._close_stage(now)
        self.finished_chunks.append((now - self.chunk_t0, self.chunk_m))
        self.images_done += self.chunk_m
        self.finished_chunk = True
        self.attack = None
        self.draw(now, force=True)

    def begin_attack(self, spec: Any, n: int) -> None:
        """Attack ``spec`` starts on ``n`` images."""
        now = time.perf_counter()
        self.attack, self.attack_n, self.attack_done = spec, int(n), 0
        self.call, self.credited = None, 0
        stages = self.stages[spec.name]
        # AutoAttack's stages open with its calls (autoattack "start"); until then nothing is predicted here
        self._open_stage(now, stages[0][0], n * stages[0][1] if len(stages) == 1 else 0.0)
        self.draw(now, force=True)

    def end_attack(self, robust: int) -> None:
        """The attack finished; ``robust`` images are still robust in the chunk (cascade: the next attack's
        images; standalone: the clean-correct ones)."""
        self._close_stage(time.perf_counter())
        self.robust = int(robust)
        self.attack = None

    def batch_done(self, n: int) -> None:
        """A batch of ``n`` images of the current attack is done (those AutoAttack's "end" counted are not counted
        again)."""
        already = min(self.credited, int(n))
        self.credited -= already
        self.attack_done += int(n) - already
        self.draw(time.perf_counter())

    def autoattack(self, event: str, **info: Any) -> None:
        """AutoAttack's events (``run_autoattack``'s ``observer``) for the current attack."""
        if self.attack is None:
            return
        now = time.perf_counter()
        stages = self.stages[self.attack.name]
        if event == "start":
            n = int(info.get("n", 0))
            alive = int(round(n * float(info.get("robust", 1.0))))
            self.call = {"n": n, "alive": alive, "entered": {}}
            key, per_image = stages[0]
            self._open_stage(now, key, alive * per_image)
        elif event == "stage" and self.call is not None:
            key = f"{self.attack.name}/{info.get('name')}"
            per_image = dict(stages).get(key)
            if per_image is not None:
                self.call["entered"][key] = self.call["alive"]
                self._open_stage(now, key, self.call["alive"] * per_image)
        elif event == "after" and self.call is not None:
            self.call["alive"] = int(round(self.call["n"] * float(info.get("robust", 0.0))))
        elif event == "end" and self.call is not None:
            for key, _ in stages:
                seen = self.survival.setdefault(key, [0.0, 0.0])
                seen[0] += self.call["entered"].get(key, 0)
                seen[1] += self.call["n"]
            self.attack_done += self.call["n"]  # its images are done (batch_done, right after, does not count them again)
            self.credited += self.call["n"]
            self.call = None
            self._open_stage(now, f"{self.attack.name}/between", 0.0)  # checks and predictions between calls
        self.draw(now, force=event != "after")

    # ------------------------------------------------------------------------------- counting
    def _on_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        x = args[0] if args else None
        rows = int(x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() > 0 else 1
        self.units += GRAD_UNITS * rows if torch.is_grad_enabled() else rows
        now = time.perf_counter()
        if now - self.last_draw >= REDRAW_SECONDS:
            self.draw(now)

    def _open_stage(self, now: float, key: str, predicted: float) -> None:
        self._close_stage(now)
        self.stage_key, self.stage_pred, self.stage_t0, self.stage_u0 = key, float(predicted), now, self.units

    def _close_stage(self, now: float) -> None:
        if self.stage_key is None:
            return
        seen = self.rates.setdefault(self.stage_key, [0.0, 0.0])
        seen[0] += now - self.stage_t0
        seen[1] += self.units - self.stage_u0
        self.stage_key = None

    # ------------------------------------------------------------------------------- estimate
    def _rate(self, key: str, predicted: float, now: float) -> float | None:
        """Seconds per unit of stage ``key``: its own once it has done OWN_RATE_SHARE of ``predicted`` units
        (or of its work so far), else the average of every stage measured."""
        seconds, units = self.rates.get(key, (0.0, 0.0))
        if key == self.stage_key:
            seconds, units = seconds + now - self.stage_t0, units + self.units - self.stage_u0
        if units > 0 and seconds > 0.05 and units >= OWN_RATE_SHARE * max(predicted, 1.0):
            return seconds / units
        return self._mean_rate(now)

    def _mean_rate(self, now: float) -> float | None:
        seconds = sum(s for s, _ in self.rates.values())
        units = sum(u for _, u in self.rates.values())
        if self.stage_key is not None:
            seconds, units = seconds + now - self.stage_t0, units + self.units - self.stage_u0
        return seconds / units if units > 0 and seconds > 0 else None

    def _share(self, key: str) -> float:
        """The share of an AutoAttack call's images that reach stage ``key``: as in the finished calls, else as
        far as the running call tells (the images that reached it, or are still robust), else 1."""
        entered, total = self.survival.get(key, (0.0, 0.0))
        if total > 0:
            return entered / total
        if self.call is not None and self.call["n"] and self.attack is not None and key.startswith(
                f"{self.attack.name}/"):
            return self.call["entered"].get(key, self.call["alive"]) / self.call["n"]
        return 1.0

    def remaining(self, now: float | None = None) -> float | None:
        """Estimated seconds left (None before anything was measured)."""
        now = time.perf_counter() if now is None else now
        if self._mean_rate(now) is None:
            return None
        left = 0.0

        def cost(key: str, units: float, predicted: float | None = None) -> float:
            rate = self._rate(key, units if predicted is None else predicted, now)
            return units * (rate or 0.0)

        if self.attack is not None:
            stages = self.stages[self.attack.name]
            if self.stage_key is not None and self.stage_pred > 0:  # the running stage
                done = self.units - self.stage_u0
                left += cost(self.stage_key, max(self.stage_pred - done, 0.05 * self.stage_pred), self.stage_pred)
            if len(stages) > 1:  # AutoAttack: the rest of the running call, then the attack's later batches
                keys = [k for k, _ in stages]
                if self.call is not None:
                    after = keys.index(self.stage_key) + 1 if self.stage_key in keys else 0
                    left += sum(cost(k, self.call["alive"] * u) for k, u in stages[after:])
                rest = max(self.attack_n - self.attack_done - (self.call["n"] if self.call is not None else 0), 0)
                left += sum(cost(k, rest * self._share(k) * u) for k, u in stages)
            later = self.specs[self.specs.index(self.attack) + 1:]
        else:
            later = self.specs if self.chunk_m and not self.finished_chunk else []
        left += sum(cost(k, self.robust * self._share(k) * u) for s in later for k, u in self.stages[s.name])
        if self.pending:
            if self.finished_chunks and (self.finished_chunk or not self.chunk_m):
                per_image = sum(t for t, _ in self.finished_chunks) / max(sum(m for _, m in self.finished_chunks), 1)
            elif self.finished_chunks:  # finished chunks and the running one, each weighed by its images
                est = ((now - self.chunk_t0) + left) / max(self.chunk_m, 1)
                seconds = sum(t for t, _ in self.finished_chunks) + est * self.chunk_m
                per_image = seconds / (sum(m for _, m in self.finished_chunks) + self.chunk_m)
            else:
                per_image = ((now - self.chunk_t0) + left) / max(self.chunk_m, 1)
            left += per_image * sum(self.pending)
        return left

    # -------------------------------------------------------------------------------- drawing
    def attack_images_done(self) -> int:
        """Images of the running attack done (finished batches, and the running one's share of its work)."""
        if self.attack is None:
            return 0
        if len(self.stages[self.attack.name]) > 1:  # AutoAttack: per call
            return min(self.attack_n, self.attack_done)
        if self.stage_pred <= 0:
            return self.attack_done
        share = min(1.0, (self.units - self.stage_u0) / self.stage_pred)
        return min(self.attack_n, max(self.attack_done, int(self.attack_n * share)))

    def draw(self, now: float, force: bool = False) -> None:
        """Record the estimate and redraw the bar (at most every REDRAW_SECONDS unless ``force``)."""
        if not force and now - self.last_draw < REDRAW_SECONDS:
            return
        self.last_draw = now
        elapsed = now - self.t0
        left = self.remaining(now)
        self.history.append((elapsed, left))
        if self.bar is None:
            return
        what = ""
        if self.attack is not None:
            what = f"{_title(self.attack.name)} {self.attack_images_done()}/{self.attack_n} img"
            keys = [k for k, _ in self.stages[self.attack.name]]
            if self.stage_key in keys and len(keys) > 1 and self.call is not None:  # AutoAttack's stage
                what += (f" · {self.stage_key.split('/', 1)[1]} ({keys.index(self.stage_key) + 1}/{len(keys)}) on "
                         f"{self.call['alive']} img")
        if len(self.finished_chunks) + len(self.pending) > 1 or self.images_done:
            what += f" · {self.images_done}/{self.total_images} img done"
        self.bar.n = 100.0 * elapsed / (elapsed + left) if left is not None and elapsed + left > 0 else 0.0
        self._text(f"{what.strip(' ·')} · {_clock(elapsed)}<{_clock(left)}")

    def _text(self, text: str) -> None:
        """Show ``text`` after the bar (held in tqdm's ``unit`` field, which BAR_FORMAT prints as it is; its
        postfix field would add a leading comma)."""
        self.bar.unit = text
        self.bar.refresh()


def _title(name: str) -> str:
    from ..attacks.suite import column_title

    return column_title(name)


def _clock(seconds: float | None) -> str:
    """``mm:ss`` (``h:mm:ss`` past an hour); ``?`` when unknown."""
    if seconds is None:
        return "?"
    seconds = int(round(max(0.0, seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


__all__ = ["AA_UNITS", "EvalProgress", "GRAD_UNITS", "attack_stages"]
