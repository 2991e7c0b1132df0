"""``ltrobust sweep GRID.yaml [key=value ...]``: a grid of runs, trained, evaluated and reported.

A grid file (``docs/reports.md``; shipped grids in ``ltrobust/configs/grids/``)::

    # cost: ...
    base: [dataset=digits-lt, model=mlp, epochs=2]   # or a preset name, or a mapping
    runs:                                             # optional explicit list, crossed with grid
      - {label: Vanilla FC, loss: ce}
      - {label: Class-aware bias (inference), eval.adjust: logit_adjust, eval.adjust_tau: 1}
    grid: {loss: [ce, bsl], imbalance: [10, 100], train.seed: [0, 1, 2]}
    eval: {attacks: [clean, pgd20, aa], n_samples: 0}
    out: runs/sweeps/NAME
    engine: local        # local | ray
    parallel: 1          # local: subprocesses at once, each pinned to one GPU (CUDA_VISIBLE_DEVICES)
    ray: {address: null, num_cpus: 1, num_gpus: auto}
    report: {metric: accuracy}

Each point is ``train defaults < base < eval < runs entry < grid values < command-line key=value``.
Keys under ``eval.`` make evaluation variants of the same trained run (another eval tag), every other
key makes another run. Runs live in ``<out>/runs/<name>``: the run's default name (data set, IR,
model, method, loss, seed) plus ``key_value`` for each key in which runs of that default name differ,
where this run departs from the default config. A run is skipped when ``train_summary.json`` (same
config, same epochs) exists; an evaluation when ``eval/<tag>.json`` with the same evaluation settings
exists. All trainings run first, then all evaluations (both through the same :func:`execute`, in
process, in subprocesses or as Ray tasks), then one report over every run in ``<out>/report/``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Sequence

import yaml

from .. import io
from ..config import PRESET_DIR, RunConfig, from_flat, load_run_config, parse_value, resolve_config, to_dict, to_flat
from ..errors import ConfigError, LtrobustError, install_hint
from ..run_folder import RunFolder
from ..attacks import check_attacks
from ..config import fmt_value

log = logging.getLogger(__name__)

GRID_DIR = PRESET_DIR / "grids"
FILE_KEYS = ("base", "grid", "runs", "eval", "out", "engine", "parallel", "ray", "report")
SWEEP_OVERRIDES = ("out", "engine", "parallel", "ray.address", "ray.num_cpus", "ray.num_gpus")
#: keys the default run name already shows (data set, IR (exp profile) or profile, model, method, loss, seed)
NAMED_KEYS = ("data.dataset", "data.imbalance", "data.profile", "model.name", "method.name", "method.loss", "train.seed")
#: keys that never make two runs different
UNNAMED_KEYS = ("name", "out", "preset", "reference", "train.progress", "train.device", "data.data_dir",
                "data.download")
#: evaluation settings that do not change the numbers (never force a re-evaluation)
EVAL_LAYOUT_KEYS = ("batch_size", "chunk_size")
SWEEP_DEFAULTS = {"train.progress": False}


# ----------------------------------------------------------------------------------------- the grid
@dataclass
class Point:
    """One (run, evaluation) of the grid."""

    cfg: RunConfig  #: the resolved config (train and eval sections)
    label: str | None
    pairs: dict[str, Any]  #: the key=value settings that produced it, for sweep.json


@dataclass
class RunPlan:
    """One training run and the evaluations made of it."""

    name: str
    run_dir: Path
    cfg: RunConfig  #: training config (out / name set to the run folder)
    evals: dict[str, Point] = field(default_factory=dict)  #: tag -> point


@dataclass
class SweepSpec:
    path: Path
    points: list[Point]
    out: Path
    engine: str = "local"
    parallel: int = 1
    ray: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


def grid_path(name: str | Path) -> Path:
    """A grid file path, or the name of a shipped grid (``digits-smoke``)."""
    p = Path(name)
    if p.is_file():
        return p
    shipped = GRID_DIR / (p.name if p.suffix else f"{p.name}.yaml")
    if shipped.is_file():
        return shipped
    available = ", ".join(sorted(q.stem for q in GRID_DIR.glob("*.yaml")))
    raise ConfigError(f"grid file {name} does not exist; pass a YAML path or a shipped grid: {available}.")


def _pairs(value: Any, where: str) -> dict[str, Any]:
    """``[k=v, ...]``, a preset name, ``preset=NAME`` or a mapping -> ordered ``{key: value}``."""
    if value is None:
        return {}
    if isinstance(value, str):
        return _pairs([value if "=" in value else f"preset={value}"], where)
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        out: dict[str, Any] = {}
        for item in value:
            if isinstance(item, Mapping):
                _update(out, {str(k): v for k, v in item.items()})
                continue
            if not isinstance(item, str) or "=" not in item:
                raise ConfigError(f"{where}: expected key=value, got {item!r} (e.g. imbalance=50).")
            k, v = item.split("=", 1)
            _update(out, {k.strip(): parse_value(v)})
        return out
    raise ConfigError(f"{where}: expected a list of key=value, a preset name or a mapping, got {value!r}.")


def _update(target: dict[str, Any], new: Mapping[str, Any]) -> None:
    """Later settings win, and move to the end (so aliases such as seed / train.seed resolve in order)."""
    for k, v in new.items():
        target.pop(k, None)
        target[k] = v


def load_grid(path: str | Path, overrides: Sequence[str] = (),
              report_options: Collection[str] | None = None) -> SweepSpec:
    """Read a grid file and expand it into resolved points (no training).

    ``report_options``: the option names the report builder takes; the grid's ``report:`` section is checked
    against them (the CLI passes ``ltrobust.report.OPTIONS``; this layer does not import the report)."""
    path = grid_path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"grid {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"grid {path} must be a mapping with base / grid / runs / eval / out keys.")
    unknown = sorted(k for k in set(raw) - set(FILE_KEYS) if not str(k).startswith("x-"))  # x-*: YAML anchors
    if unknown:
        raise ConfigError(f"grid {path}: unknown top-level key(s) {', '.join(unknown)}; valid: {', '.join(FILE_KEYS)}.")
    cli = _pairs(list(overrides), "command line")
    sweep_over = {k: cli.pop(k) for k in list(cli) if k in SWEEP_OVERRIDES}
    ray_cfg = dict(raw.get("ray") or {})
    for k in ("address", "num_cpus", "num_gpus"):
        if f"ray.{k}" in sweep_over:
            ray_cfg[k] = sweep_over[f"ray.{k}"]
    base = _pairs(raw.get("base"), f"{path}: base")
    eval_pairs = {f"eval.{k}" if not str(k).startswith("eval.") else str(k): v
                  for k, v in (raw.get("eval") or {}).items()}
    grid = raw.get("grid") or {}
    if not isinstance(grid, Mapping) or any(not isinstance(v, list) or not v for v in grid.values()):
        raise ConfigError(f"grid {path}: `grid` must map keys to non-empty lists, e.g. grid: {{imbalance: [10, 100]}}.")
    entries = raw.get("runs") or [{}]
    if not isinstance(entries, list):
        raise ConfigError(f"grid {path}: `runs` must be a list of settings (mappings or key=value lists).")
    points = []
    for i, entry in enumerate(entries):
        entry = dict(entry) if isinstance(entry, Mapping) else entry
        label = entry.pop("label", None) if isinstance(entry, dict) else None
        entry_pairs = _pairs(entry, f"{path}: runs[{i}]")
        for combo in itertools.product(*grid.values()):
            pairs: dict[str, Any] = {}
            for part in (SWEEP_DEFAULTS, base, eval_pairs, entry_pairs, dict(zip(grid.keys(), combo)), cli):
                _update(pairs, part)
            try:
                cfg = resolve_config(pairs)
            except ConfigError as exc:
                raise ConfigError(f"grid {path}, runs[{i}] {dict(zip(grid.keys(), combo))}: {exc}") from None
            points.append(Point(cfg=cfg, label=str(label) if label else None, pairs=pairs))
    # absolute, so subprocesses and Ray workers (whose working folder may differ) find the runs
    out = Path(str(sweep_over.get("out") or raw.get("out") or Path("runs") / "sweeps" / path.stem)).resolve()
    engine = str(sweep_over.get("engine") or raw.get("engine") or "local")
    if engine not in ("local", "ray"):
        raise ConfigError(f"engine={engine!r}: use local or ray.")
    try:
        parallel = int(next((v for v in (sweep_over.get("parallel"), raw.get("parallel")) if v is not None), 1))
    except (TypeError, ValueError):
        raise ConfigError("parallel must be a whole number of runs at once (e.g. parallel=4).") from None
    if parallel < 1:
        raise ConfigError(f"parallel={parallel} must be >= 1.")
    report = dict(raw.get("report") or {})
    if report_options is not None:
        bad = sorted(set(report) - set(report_options) | ({"out"} & set(report)))
        if bad:
            raise ConfigError(f"grid {path}: unknown report option(s) {', '.join(bad)}; valid: "
                              f"{', '.join(o for o in report_options if o != 'out')} (the report goes to <out>/report).")
    return SweepSpec(path=path, points=points, out=out, engine=engine, parallel=parallel, ray=ray_cfg, report=report)


# -------------------------------------------------------------------------------------- run naming
def train_flat(cfg: RunConfig) -> dict[str, Any]:
    """The config that defines the trained weights: everything but ``eval.*`` and bookkeeping keys."""
    return {k: v for k, v in to_flat(cfg).items() if not k.startswith("eval.") and k not in UNNAMED_KEYS}


def eval_tag(cfg: RunConfig) -> str:
    """The tag :func:`ltrobust.evaluation.runs.evaluate_run` writes for a run folder: ``best``,
    ``last-logit_adjust1``, ... (:func:`ltrobust.evaluation.runs.result_tag`)."""
    from ..evaluation.runs import result_tag

    return result_tag(cfg)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


def plan_runs(spec: SweepSpec) -> list[RunPlan]:
    """Group points into training runs, name the run folders, check for clashes."""
    by_train: dict[str, tuple[dict[str, Any], list[Point]]] = {}
    for p in spec.points:
        check_attacks(p.cfg.eval)  # a typo in eval.attacks fails before any run of the grid
        flat = train_flat(p.cfg)
        key = json.dumps(flat, sort_keys=True, default=str)
        by_train.setdefault(key, (flat, []))[1].append(p)
    default = to_flat(RunConfig())
    groups: dict[str, list[dict[str, Any]]] = {}  # default run name -> training configs sharing it
    for flat, points in by_train.values():
        groups.setdefault(points[0].cfg.run_name(), []).append(flat)
    plans: list[RunPlan] = []
    for flat, points in by_train.values():
        cfg = points[0].cfg
        explicit = next((p.pairs.get("name") for p in points if p.pairs.get("name")), None)
        if explicit:
            name = _slug(str(explicit))
        else:
            # keys in which runs of the same default name differ, shown where this run is not at the default
            mates = groups[cfg.run_name()]
            named = NAMED_KEYS if cfg.data.profile == "exp" else tuple(k for k in NAMED_KEYS if k != "data.imbalance")
            varying = [k for k in dict.fromkeys(k for f in mates for k in f) if k not in named
                       and len({json.dumps(f.get(k), default=str) for f in mates}) > 1]
            parts = [_slug(f"{_short(k)}_{fmt_value(flat[k])}") for k in varying
                     if k in flat and json.dumps(flat[k], default=str) != json.dumps(default.get(k), default=str)]
            name = "-".join([cfg.run_name()] + parts)
            if len(name) > 120:
                name = f"{name[:100]}-h{_digest(flat)}"
        plans.append(RunPlan(name=name, run_dir=spec.out / "runs" / name, cfg=cfg))
    counts: dict[str, int] = {}
    for plan in plans:
        counts[plan.name] = counts.get(plan.name, 0) + 1
    for plan, (flat, points) in zip(plans, by_train.values()):
        if counts[plan.name] > 1:  # two different trainings would share a folder: tell them apart
            plan.name = f"{plan.name}-h{_digest(flat)}"
            plan.run_dir = spec.out / "runs" / plan.name
        plan.cfg = from_flat(to_flat(plan.cfg) | {"out": str(spec.out / "runs"), "name": plan.name})
        for p in points:
            tag = eval_tag(p.cfg)
            if tag in plan.evals and _eval_settings(plan.evals[tag].cfg) != _eval_settings(p.cfg):
                raise ConfigError(f"grid {spec.path}: two evaluations of run {plan.name} share the eval tag {tag!r} "
                                  f"but differ in their settings ({_eval_settings(plan.evals[tag].cfg)} vs "
                                  f"{_eval_settings(p.cfg)}); put evaluation settings that differ into separate grids.")
            if tag not in plan.evals or (p.label and not plan.evals[tag].label):
                plan.evals[tag] = p
    return plans


def _eval_settings(cfg: RunConfig) -> dict[str, Any]:
    d = to_dict(cfg)["eval"]
    return {k: v for k, v in d.items() if k not in EVAL_LAYOUT_KEYS}


def eval_overrides(cfg: RunConfig) -> list[str]:
    """Every ``eval.*`` field of ``cfg`` as ``eval.KEY=VALUE`` strings for :func:`evaluate_run`."""
    out = []
    for k, v in to_dict(cfg)["eval"].items():
        if isinstance(v, (list, tuple)):
            text = ",".join(str(x) for x in v)
        elif isinstance(v, bool):
            text = "true" if v else "false"
        elif isinstance(v, float):
            text = repr(v)
        else:
            text = str(v)
        out.append(f"eval.{k}={text}")
    return out


# ----------------------------------------------------------------------------------- done or not
def training_done(run_dir: Path, cfg: RunConfig) -> bool:
    """True when ``run_dir`` holds a finished training of ``cfg`` (``train_summary.json``, same epochs).

    Raises :class:`ConfigError` when the folder holds a finished run of a different config.
    """
    folder = RunFolder(run_dir)
    summary_path = folder.summary
    if not summary_path.is_file():
        return False
    try:
        summary = io.read_json(summary_path)
    except LtrobustError:
        return False
    if folder.config.is_file():
        from ..training.trainer import config_diffs

        diffs = config_diffs(to_dict(load_run_config(folder.config)), to_dict(cfg))
        if diffs:
            raise ConfigError(f"run folder {run_dir} holds a finished run with a different config "
                              f"({'; '.join(diffs[:4])}); delete the folder or choose another out=.")
    return int(summary.get("epochs", -1)) == cfg.train.epochs


def evaluation_done(run_dir: Path, cfg: RunConfig) -> bool:
    """True when ``eval/<tag>.json`` exists with the same evaluation settings as ``cfg``."""
    path = RunFolder(run_dir).eval_result(eval_tag(cfg))
    if not path.is_file():
        return False
    try:
        stored = io.read_json(path)
    except LtrobustError:
        return False
    got = {k: v for k, v in ((stored.get("config") or {}).get("eval") or {}).items() if k not in EVAL_LAYOUT_KEYS}
    want = json.loads(json.dumps(_eval_settings(cfg)))
    return got == want


# ------------------------------------------------------------------------------------------- jobs
def execute(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job (train a run, or evaluate one tag of it), skipping it when already done.

    The same function runs in process, in a subprocess (``python -m ltrobust.experiments.sweep JOB.json``)
    and as a Ray task. ``job``: ``{"stage": "train" | "eval", "run_dir", "config" (flat run config),
    "overrides" (eval), "fresh" (eval: drop chunks of an older model)}``. Returns
    ``{"stage", "run_dir", "tag", "ran", "seconds"}``.
    """
    t0 = time.perf_counter()
    run_dir = Path(job["run_dir"])
    cfg = from_flat(job["config"])
    ran = False
    if job["stage"] == "train":
        if not training_done(run_dir, cfg):
            from .recipe import train

            train(cfg, run_dir=run_dir)
            ran = True
    elif job["stage"] == "eval":
        ecfg = resolve_config(job["overrides"], base=cfg)
        if job.get("fresh"):
            shutil.rmtree(RunFolder(run_dir).eval_chunks(eval_tag(ecfg)), ignore_errors=True)
        if job.get("fresh") or not evaluation_done(run_dir, ecfg):
            from ..evaluation.runs import evaluate_run

            # the grid defines what each tag holds: a changed grid replaces the tag's result (with a warning)
            evaluate_run(run_dir, job["overrides"], device=cfg.train.device, progress=False, replace=True)
            ran = True
    else:
        raise ConfigError(f"unknown sweep job stage {job['stage']!r}")
    return {"stage": job["stage"], "run_dir": str(run_dir), "tag": job.get("tag"), "ran": ran,
            "seconds": round(time.perf_counter() - t0, 3)}


def _jsonable_flat(cfg: RunConfig) -> dict[str, Any]:
    return json.loads(json.dumps(to_flat(cfg), default=list))


@dataclass
class Outcome:
    job: dict[str, Any]
    result: dict[str, Any] | None = None
    error: str | None = None


def visible_gpus() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else every CUDA device."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no CUDA build, no driver
        return []


def slot_env(slot: int, gpus: Sequence[str], parallel: int, cpus: int | None = None) -> dict[str, str]:
    """Environment of subprocess slot ``slot``: pinned to GPU ``gpus[slot % len(gpus)]`` when there are
    GPUs, else an even share of the CPU threads."""
    env: dict[str, str] = {}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(gpus[slot % len(gpus)])
    else:
        env["OMP_NUM_THREADS"] = str(max(1, (cpus or os.cpu_count() or 1) // parallel))
    return env


def _run_inprocess(jobs: Sequence[dict[str, Any]], spec: SweepSpec) -> list[Outcome]:
    outcomes = []
    for i, job in enumerate(jobs, 1):
        log.info("[%d/%d] %s %s%s", i, len(jobs), job["stage"], Path(job["run_dir"]).name,
                 f" ({job['tag']})" if job.get("tag") else "")
        try:
            outcomes.append(Outcome(job, execute(job)))
        except Exception as exc:  # noqa: BLE001 - one failed run must not stop the sweep
            log.error("%s of %s failed: %s: %s", job["stage"], job["run_dir"], type(exc).__name__, exc)
            outcomes.append(Outcome(job, error=f"{type(exc).__name__}: {exc}"))
    return outcomes


def _run_subprocesses(jobs: Sequence[dict[str, Any]], spec: SweepSpec) -> list[Outcome]:
    """``parallel`` subprocesses at once, slot k pinned to GPU k mod #GPUs via CUDA_VISIBLE_DEVICES."""
    gpus = visible_gpus()
    job_dir, log_dir = spec.out / "jobs", spec.out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    pending = list(enumerate(jobs))
    running: dict[int, tuple[subprocess.Popen, int, Path, Any]] = {}
    outcomes: dict[int, Outcome] = {}
    while pending or running:
        free = [s for s in range(spec.parallel) if s not in running]
        while pending and free:
            slot = free.pop(0)
            idx, job = pending.pop(0)
            stem = f"{job['stage']}-{Path(job['run_dir']).name}" + (f"-{job['tag']}" if job.get("tag") else "")
            job_path = job_dir / f"{stem}.json"
            io.write_json(job_path, job, checksum=False)
            env = os.environ | slot_env(slot, gpus, spec.parallel)
            logf = open(log_dir / f"{stem}.log", "w")
            proc = subprocess.Popen([sys.executable, "-m", "ltrobust.experiments.sweep", str(job_path)], env=env,
                                    stdout=logf, stderr=subprocess.STDOUT)
            log.info("started %s (slot %d%s), log %s", stem, slot,
                     f", GPU {env['CUDA_VISIBLE_DEVICES']}" if gpus else "", log_dir / f"{stem}.log")
            running[slot] = (proc, idx, job_path, logf)
        time.sleep(0.2)
        for slot, (proc, idx, job_path, logf) in list(running.items()):
            if proc.poll() is None:
                continue
            logf.close()
            del running[slot]
            result_path = job_path.with_suffix(".result.json")
            if proc.returncode == 0 and result_path.is_file():
                outcomes[idx] = Outcome(jobs[idx], json.loads(result_path.read_text()))
            else:
                tail = _tail(Path(logf.name))
                outcomes[idx] = Outcome(jobs[idx], error=f"exit status {proc.returncode}; see {logf.name}: {tail}")
                log.error("%s failed (exit %s), log %s", job_path.stem, proc.returncode, logf.name)
    return [outcomes[i] for i in range(len(jobs))]


def _tail(path: Path, n: int = 300) -> str:
    try:
        return path.read_text()[-n:].strip().replace("\n", " | ")
    except OSError:
        return ""


def _run_ray(jobs: Sequence[dict[str, Any]], spec: SweepSpec) -> list[Outcome]:
    """Each job a Ray task calling :func:`execute` (one GPU per task when the cluster has GPUs)."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"engine: ray needs Ray: {install_hint('ray')}; or use engine: local.") from None
    if not ray.is_initialized():
        address = spec.ray.get("address")
        ray.init(address=address or None, include_dashboard=False, log_to_driver=True)
        spec.ray["_started"] = True
    gpus_in_cluster = float(ray.cluster_resources().get("GPU", 0))
    num_gpus = spec.ray.get("num_gpus", "auto")
    num_gpus = (1 if gpus_in_cluster >= 1 else 0) if num_gpus in (None, "auto") else float(num_gpus)
    num_cpus = float(spec.ray.get("num_cpus") or 1)
    task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(execute)
    refs = [task.remote(job) for job in jobs]
    outcomes = []
    for job, ref in zip(jobs, refs):
        try:
            outcomes.append(Outcome(job, ray.get(ref)))
        except Exception as exc:  # noqa: BLE001 - RayTaskError wraps the task's exception
            log.error("%s of %s failed on Ray: %s", job["stage"], job["run_dir"], exc)
            outcomes.append(Outcome(job, error=f"{type(exc).__name__}: {str(exc)[-500:]}"))
    return outcomes


def _dispatch(jobs: Sequence[dict[str, Any]], spec: SweepSpec) -> list[Outcome]:
    if not jobs:
        return []
    if spec.engine == "ray":
        return _run_ray(jobs, spec)
    if spec.parallel > 1:
        return _run_subprocesses(jobs, spec)
    return _run_inprocess(jobs, spec)


# --------------------------------------------------------------------------------------- the sweep
def run_sweep(grid: str | Path, overrides: Sequence[str] = (),
              report: Callable[..., dict[str, Any]] | None = None,
              report_options: Collection[str] | None = None) -> dict[str, Any]:
    """Train, evaluate and report every point of a grid file, skipping what is already done.

    Args:
        grid: a grid YAML path or a shipped grid's name (``digits-smoke``).
        overrides: ``key=value`` for every run (win over the file), or sweep settings ``out=``,
            ``engine=``, ``parallel=``, ``ray.address=``.
        report: ``build(inputs, out=..., **options) -> {"index": path}`` called once at the end over every
            finished run (``ltrobust.report.build_report``; None: no report). Reports read stored results
            only, so this layer takes the builder as an argument instead of importing it.
        report_options: the builder's option names, to check the grid's ``report:`` section up front.

    Returns:
        ``{"n_runs", "n_skipped" (runs whose training and evaluations were all done before),
        "n_trained", "n_evaluated", "n_failed", "failed", "out", "report" (index.html or None), "runs"}``.

    Example::

        from ltrobust.report import OPTIONS, build_report
        run_sweep("digits-smoke", ["out=/tmp/smoke"], report=build_report, report_options=OPTIONS)
    """
    spec = load_grid(grid, overrides, report_options)
    plans = plan_runs(spec)
    spec.out.mkdir(parents=True, exist_ok=True)
    before = {p.name: training_done(p.run_dir, p.cfg) and all(evaluation_done(p.run_dir, pt.cfg)
                                                              for pt in p.evals.values()) for p in plans}
    log.info("sweep %s: %d points, %d runs (%d already done), engine %s, parallel %d", spec.path.name,
             len(spec.points), len(plans), sum(before.values()), spec.engine, spec.parallel)
    _write_manifest(spec, plans, failed=[])

    train_jobs = [{"stage": "train", "run_dir": str(p.run_dir), "config": _jsonable_flat(p.cfg)}
                  for p in plans if not training_done(p.run_dir, p.cfg)]
    trained_out = _dispatch(train_jobs, spec)
    trained = {o.job["run_dir"] for o in trained_out if o.result and o.result.get("ran")}
    failed = [{"run": o.job["run_dir"], "stage": "train", "error": o.error} for o in trained_out if o.error]
    bad = {f["run"] for f in failed}

    eval_jobs = []
    for p in plans:
        if str(p.run_dir) in bad:
            continue
        for tag, pt in p.evals.items():
            fresh = str(p.run_dir) in trained
            if fresh or not evaluation_done(p.run_dir, pt.cfg):
                eval_jobs.append({"stage": "eval", "run_dir": str(p.run_dir), "config": _jsonable_flat(p.cfg),
                                  "overrides": eval_overrides(pt.cfg), "tag": tag, "fresh": fresh})
    eval_out = _dispatch(eval_jobs, spec)
    failed += [{"run": o.job["run_dir"], "stage": "eval", "tag": o.job["tag"], "error": o.error}
               for o in eval_out if o.error]
    _write_manifest(spec, plans, failed)
    _shutdown_ray_if_ours(spec)

    index = None
    n_entries = sum(1 for p in plans for pt in p.evals.values() if evaluation_done(p.run_dir, pt.cfg))
    if n_entries and report is not None:
        index = report([str(spec.out)], out=str(spec.out / "report"), **spec.report)["index"]
    result = {"n_runs": len(plans), "n_skipped": sum(before.values()),
              "n_trained": len(trained), "n_evaluated": sum(1 for o in eval_out if o.result and o.result.get("ran")),
              "n_failed": len(failed), "failed": failed, "out": str(spec.out), "report": index,
              "runs": [str(p.run_dir) for p in plans]}
    if failed:
        lines = "; ".join(f"{Path(f['run']).name} ({f['stage']}): {_short_error(f['error'])}" for f in failed[:5])
        shown = f"The report {index} shows the runs that finished. " if index else "No report was written. "
        raise LtrobustError(f"{len(failed)} job(s) of the sweep failed: {lines}. {shown}Fix the cause and re-run the "
                            f"same command: finished runs are skipped (failures are listed in {spec.out / 'sweep.json'}).")
    return result


def _short_error(text: str | None, n: int = 240) -> str:
    one = " ".join((text or "").split())
    return one if len(one) <= n else one[:n] + " ..."


def _shutdown_ray_if_ours(spec: SweepSpec) -> None:
    """Shut down the Ray instance :func:`_run_ray` started; leave one the caller started running."""
    if spec.ray.get("_started"):
        import ray

        ray.shutdown()
        spec.ray["_started"] = False


def _write_manifest(spec: SweepSpec, plans: Sequence[RunPlan], failed: Sequence[dict[str, Any]]) -> None:
    """``<out>/sweep.json``: the grid, its (run, tag) entries in grid order with labels, and failures."""
    by_train = {json.dumps(train_flat(p.cfg), sort_keys=True, default=str): p for p in plans}
    entries, seen = [], set()
    for point in spec.points:  # grid order: the report's row order
        plan = by_train[json.dumps(train_flat(point.cfg), sort_keys=True, default=str)]
        tag = eval_tag(point.cfg)
        if (plan.name, tag) in seen:
            continue
        seen.add((plan.name, tag))
        pt = plan.evals[tag]
        entries.append({"run": str(plan.run_dir.relative_to(spec.out)), "tag": tag, "label": pt.label,
                        "settings": {k: v for k, v in pt.pairs.items() if k not in SWEEP_DEFAULTS}})
    io.write_json(spec.out / "sweep.json", {
        "grid": str(spec.path.resolve()), "engine": spec.engine, "parallel": spec.parallel,
        "runs": [str(p.run_dir.relative_to(spec.out)) for p in plans], "entries": entries, "failed": list(failed)})


# ------------------------------------------------------------------------------------ subprocess
def _main(argv: Sequence[str]) -> int:
    """``python -m ltrobust.experiments.sweep JOB.json``: run one job, write ``JOB.result.json``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    job_path = Path(argv[0])
    job = io.read_json(job_path, verify=False)
    result = execute(job)
    io.write_json(job_path.with_suffix(".result.json"), result, checksum=False)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
