"""Trial sweeps: findings x inits x modes x shots x trials, with every trial's row kept.

Protocol (docs/design.md, "Few-shot"):

* One test pool per finding (`episodes.test_split`: the manifest's split=test patients, else a
  patient-level hold-out drawn with `split_seed`), never trained on.
* Trial t of k shots for finding F uses the episode drawn with `trial_seed(seed, F, k, t)` and is
  scored on its own test sample, a patient-level bootstrap resample of the pool drawn with
  `test_seed(split_seed, F, k, t)` (`resample_test`; docs/design.md "Uncertainty"); both are the same
  for every init and mode, so inits are compared on the same training and test images (paired), and
  the spread across trials includes test-set sampling. A pool with fewer than `SMALL_TEST` images of
  either class gets a warning.
* Every trial's head is the head recipe's (engine.fewshot.head_recipe; names: engine.fewshot.modes), so a
  trial is the model the Classifier builds on the same images with the trial's seed (tested):
  `probe` trials fit the probe on features embedded once per init; `finetune` trials are the Classifier's
  finetune (the episode's activation cache with views drawn from the trial seed, then the last stage + head);
  `full_finetune` trials train the whole network + head (the seed study's finetune; a shot count's trials
  vmapped at once on CUDA); `double_full_finetune` trials are full finetunes starting from the init
  finetuned once, whole network, on an intermediate finding.
* config.json records `recipe_version` (engine.fewshot.modes). A folder written before it (version 1: its
  `finetune` was the whole network) is read with its modes renamed (`finetune` -> `full_finetune`,
  `double_finetune` -> `double_full_finetune`; trials.py `read_trials` / `read_summary`); resuming it renames
  them on disk before anything else is written, and refuses to add the Classifier's `finetune` to a folder
  whose old `finetune` trials were whole-network ones.
* Trial rows and summary rows: engine.fewshot.trials (AUC on the trial's sample and on the pool; the
  summary's mean, its SE and 95% interval over episodes and test sampling, and `uncertainty` naming
  the method). Unavailable inits and shot counts larger than the pool allows appear with `status`
  "unavailable" / "too_few_shots" and a message.

Outputs in `out_dir`: `trials.csv` (rewritten atomically after every group of trials; a resumed
sweep skips the rows already there), `summary.csv`, `paired.csv` (d vs random init with SE, 95% interval,
wins and `uncertainty`, when random is among the inits), `auc_vs_shots.html`, `config.json`, `input_sizes.json`
(the size each init ran at, its training size, and whether the size was asked for: engine.fewshot.sizes).
"""
from __future__ import annotations

import dataclasses
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from engine.atomic import atomic_write
from engine.events import Cancelled, OnEvent, as_log, check_stop, emit
from engine.fewshot.episodes import (ShotsError, sample_episode, shared_test_counts, test_sample, test_seed, test_split,
                                     trial_seed)
from engine.fewshot.metrics import FIXED, RESAMPLED, paired_differences
from engine.fewshot.fast_finetune import FastFinetune
from engine.fewshot.finetune import FinetuneConfig
from engine.fewshot.head_recipe import HeadSettings, fit, fit_many, prepare
from engine.fewshot.modes import RECIPE_VERSION, SWEEP_MODES, check_modes, current_modes, recipe_version
from engine.fewshot.stage_one import stage_one_backbone
from engine.fewshot.probe import DEFAULT_C
from engine.fewshot.sizes import CacheBySize, check_inits as _check_inits, init_sizes
from engine.fewshot.trials import (GROUP, KEY, METRICS, TRIAL_COLUMNS, evaluate_trial,  # noqa: F401
                                   migrate_sweep_files, read_trials, summarize, write_csv)
from engine.models.registry import BackboneMeta, InitUnavailableError, load_backbone

MODES = SWEEP_MODES  # probe, finetune (the Classifier's), full_finetune, double_full_finetune
SMALL_TEST = 30  # fewer test images than this in either class: the sweep warns that intervals are wide
LOCK_NAME = ".sweep.lock"  # held by the one sweep writing to an output folder


class SweepBusyError(RuntimeError):
    """Another sweep holds the output folder's lock; the message says what to do."""


# Fields that define what a trial row means: a resumed sweep must not change them.
PROTOCOL_FIELDS = ("image_size", "seed", "split_seed", "resample_test", "n_bootstrap", "test_fraction", "probe_C",
                   "finetune", "full_finetune", "arch", "intermediate_manifest", "intermediate_finding",
                   "intermediate_max_images")


@dataclass(frozen=True)
class SweepConfig:
    findings: tuple[str, ...] = ()
    inits: tuple[str, ...] = ("random",)
    modes: tuple[str, ...] = ("probe",)
    shots: tuple[int, ...] = (1, 5, 10, 20, 50)  # the study's shot counts
    trials: int = 10  # trials per shot count (the study's default)
    image_size: int | None = None  # None: each init at its own input size (engine.fewshot.sizes); N: all at N px
    seed: int = 0
    n_bootstrap: int = 500  # test-set resamples per trial (MoCo-CXR transfer study: 500)
    test_fraction: float = 0.3  # patient-level hold-out when the manifest has no split column
    probe_C: float = DEFAULT_C
    finetune: FastFinetune = field(default_factory=FastFinetune)  # mode finetune: the Classifier's (cached last stage)
    full_finetune: FinetuneConfig = field(default_factory=FinetuneConfig)  # full_finetune, double_full_finetune
    arch: str | None = None  # arch of `random` / `imagenet` (default resnet18)
    # Full-finetune a shot count's trials in one vmapped pass. None = on CUDA only: on CPU, vmapped (grouped)
    # convolutions ran ~2x slower than one trial after another (bench/finetune_sweep.py).
    batch_trials: bool | None = None
    embed_batch_size: int = 64
    intermediate_manifest: str | None = None  # double_full_finetune: stage-one manifest (default: this one)
    intermediate_finding: str | None = None  # double_full_finetune: stage-one finding
    intermediate_max_images: int = 2000  # cap on stage-one images (seeded subsample)
    # Score each trial on its own patient-level bootstrap sample of the test pool (the uncertainty then
    # covers test-set sampling, metrics.RESAMPLED); False = every trial on the one pool (metrics.FIXED).
    resample_test: bool = True
    split_seed: int | None = None  # seed of the hold-out (no split column) and test samples; None = seed

    @property
    def uncertainty(self) -> str:
        """How this sweep's intervals are computed: metrics.RESAMPLED or metrics.FIXED."""
        return RESAMPLED if self.resample_test else FIXED

    def __post_init__(self) -> None:
        check_modes(self.modes, MODES)
        if not self.findings or not self.inits or not self.modes or not self.shots:
            raise ValueError("a sweep needs at least one finding, init, mode and shot count")
        if self.trials < 1 or min(self.shots) < 1:
            raise ValueError("trials and shots must be at least 1")
        if "double_full_finetune" in self.modes and not self.intermediate_finding:
            raise ValueError("mode double_full_finetune needs intermediate_finding (and optionally "
                             "intermediate_manifest)")

    @property
    def head_settings(self) -> HeadSettings:
        """The head recipe's settings of this sweep."""
        return HeadSettings(C=self.probe_C, fast=self.finetune, full=self.full_finetune)

    def to_dict(self) -> dict[str, Any]:
        """The fields, plus `uncertainty` (the method's words) and `recipe_version` (engine.fewshot.modes)."""
        return {**json.loads(json.dumps(dataclasses.asdict(self))), "uncertainty": self.uncertainty,
                "recipe_version": RECIPE_VERSION}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SweepConfig":
        """The config of a `to_dict` of the current recipe version (`migrate_config` first for an older one)."""
        d = dict(d)
        d.pop("uncertainty", None)
        d.pop("recipe_version", None)
        untuple = lambda c: {k: tuple(v) if isinstance(v, list) else v for k, v in (c or {}).items()}  # noqa: E731
        ft = FastFinetune(**untuple(d.pop("finetune", None)))
        full = FinetuneConfig(**untuple(d.pop("full_finetune", None)))
        tup = {k: tuple(v) for k, v in d.items() if isinstance(v, list)}
        return cls(**{**d, **tup, "finetune": ft, "full_finetune": full})


def migrate_config(old: dict[str, Any], new: dict[str, Any] | None = None) -> dict[str, Any]:
    """A stored config.json under the current recipe's names. Version 1 (no `recipe_version`): its `finetune`
    settings were the whole network's -> `full_finetune`, its modes renamed (engine.fewshot.modes); the
    Classifier's finetune settings are taken from `new` (none of its trials used them), else the default."""
    if recipe_version(old) >= RECIPE_VERSION:
        return dict(old)
    out = {"resample_test": False, "split_seed": None, **old}  # sweeps written before these fields: fixed test set
    out["modes"] = current_modes(out.get("modes") or [], 1)
    out["full_finetune"] = out.pop("finetune", None) or dataclasses.asdict(FinetuneConfig())
    out["finetune"] = (new or {}).get("finetune", json.loads(json.dumps(dataclasses.asdict(FastFinetune()))))
    out["recipe_version"] = RECIPE_VERSION
    return out


@dataclass
class SweepResult:
    trials: pd.DataFrame
    summary: pd.DataFrame
    out_dir: Path
    warnings: list[str] = field(default_factory=list)
    input_sizes: dict[str, dict[str, Any]] = field(default_factory=dict)  # init -> its size (engine.fewshot.sizes)


# ------------------------------------------------------------------------------------------- files

def _check_config(out_dir: Path, cfg: SweepConfig, resume: bool) -> SweepConfig:
    """Refuse a resume with other protocol settings; returns the config to run (a resume given no image size
    takes the size its finished trials ran at: the recorded config is the resume key)."""
    cfg_path, trials_path = out_dir / "config.json", out_dir / "trials.csv"
    if trials_path.exists() and not resume:
        raise ValueError(f"{out_dir} already holds a sweep (trials.csv); pass --resume (resume=True) to continue "
                         f"it, or choose another output folder")
    if resume and cfg_path.exists():
        from engine.resume import check_same_settings

        stored = json.loads(cfg_path.read_text())
        version = recipe_version(stored)
        old = migrate_config({"resample_test": False, "split_seed": None, **stored}, cfg.to_dict())
        if cfg.image_size is None and old.get("image_size") is not None:
            cfg = dataclasses.replace(cfg, image_size=int(old["image_size"]))
        if version < RECIPE_VERSION and "finetune" in cfg.modes and "finetune" in (stored.get("modes") or []):
            raise ValueError(f"cannot resume the sweep in {out_dir} with mode finetune: its finetune trials were "
                             "whole-network finetunes (written before the Classifier's finetune became the sweep's), "
                             "now named full_finetune. Resume it with full_finetune to continue them, or use another "
                             "output folder for the Classifier's finetune")
        check_same_settings(old, cfg.to_dict(), what=f"the sweep in {out_dir}", only=PROTOCOL_FIELDS,
                            fix="Use another output folder for new settings")
        if version < RECIPE_VERSION:  # rows renamed on disk before config.json says they are current
            migrate_sweep_files(out_dir, version)
    atomic_write(cfg_path, lambda tmp: Path(tmp).write_text(json.dumps(cfg.to_dict(), indent=2)))
    return cfg


# ------------------------------------------------------------------------------------------- the sweep

@dataclass
class _Plan:
    """Test set and episodes of one finding (positional rows of the manifest)."""

    finding: str
    labels: np.ndarray
    test_idx: np.ndarray
    episodes: dict[int, list[tuple[int, int, np.ndarray]]]  # shots -> [(trial, seed, idx)]
    max_k: int | None = None
    samples: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # (shots, trial) -> positions in test_idx
    shared: dict[int, np.ndarray] = field(default_factory=dict)  # shots -> (B, n_test) shared resample counts

    def sample(self, k: int, trial: int) -> np.ndarray | None:
        """The trial's test sample (positions into test_idx), or None when every trial uses the whole pool."""
        return self.samples.get((k, trial))


def _plan(df: pd.DataFrame, cfg: SweepConfig, on_event: OnEvent | None) -> tuple[list[_Plan], list[dict], list[str]]:
    plans, skipped, warnings = [], [], []
    pids = df["patient_id"].astype(str).to_numpy()
    split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    for finding in cfg.findings:
        labels = df[finding].to_numpy(dtype=np.float64)
        pool, test = test_split(df, finding, seed=split_seed, test_fraction=cfg.test_fraction)
        plan = _Plan(finding, labels, test, {})
        n_pos, n_neg = int((labels[test] == 1).sum()), int((labels[test] == 0).sum())
        if min(n_pos, n_neg) < SMALL_TEST:
            warnings.append(f"{finding}: small test set, {test.size} images ({n_pos} with the finding, {n_neg} "
                            f"without); fewer than {SMALL_TEST} in a class makes every AUC interval wide")
            emit(on_event, message=warnings[-1], level="warning", kind="warning")
        for k in cfg.shots:
            try:
                plan.episodes[k] = [
                    (t, s, sample_episode(labels, pids, pool, k, s))
                    for t, s in ((t, trial_seed(cfg.seed, finding, k, t)) for t in range(cfg.trials))
                ]
                if cfg.resample_test:
                    plan.samples.update({(k, t): test_sample(labels, pids, test, test_seed(split_seed, finding, k, t))
                                         for t in range(cfg.trials)})
                    plan.shared[k] = shared_test_counts(labels, pids, test, split_seed, finding, k)
            except ShotsError as e:
                msg = f"{finding}: skipping {k} shots: {e}"
                warnings.append(msg)
                emit(on_event, message=msg, level="warning", kind="warning")
                skipped += [{"finding": finding, "init": i, "mode": m, "shots": k, "status": "too_few_shots",
                             "message": str(e)} for i in cfg.inits for m in cfg.modes]
        plans.append(plan)
    return plans, skipped, warnings


def run_sweep(
    manifest_csv: str | Path,
    cfg: SweepConfig,
    out_dir: str | Path,
    device: torch.device | str,
    on_event: OnEvent | None = None,
    stop: threading.Event | None = None,
    resume: bool = False,
    checkpoint_dir: Path | None = None,
    cache_dir: Path | None = None,
) -> SweepResult:
    """Run (or resume) a sweep; writes trials.csv, summary.csv, auc_vs_shots.html in `out_dir`.

    One sweep writes to an output folder at a time: it holds the exclusive file lock
    `out_dir/.sweep.lock` for its whole run, and a second sweep on the same folder (any process)
    raises `SweepBusyError` at once. Also raises `UnknownInitError` / ValueError for unknown inits
    or findings and for an existing sweep without `resume` (before anything is written),
    `engine.diskspace.DiskFullError` on a full disk (trials.csv keeps the last complete group), and
    `Cancelled` after saving trials.csv when `stop` is set. `checkpoint_dir`: where inits are looked
    up (default: engine.paths.checkpoints_dir()). `cache_dir`: the image (`cache/`) and embedding (`features/`)
    caches' folder; default `<out_dir>/.cache`, never the default workspace (the app's job passes its own)."""
    from engine.data.manifest import load_manifest

    device = torch.device(device)
    out_dir = Path(out_dir)
    _check_inits(cfg.inits, cfg.arch, checkpoint_dir)  # user errors first, before anything is written
    manifest = load_manifest(manifest_csv)
    unknown = [f for f in cfg.findings if f not in manifest.findings]
    if unknown:
        raise ValueError(f"unknown finding(s) {unknown}; {manifest_csv} has: {', '.join(manifest.findings)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock_out_dir(out_dir)
    try:
        cfg = _check_config(out_dir, cfg, resume)
        run = _SweepRun.start(manifest_csv, manifest, cfg, out_dir, device, on_event, stop, resume, checkpoint_dir,
                              Path(cache_dir) if cache_dir is not None else out_dir / ".cache")
        try:
            for init in cfg.inits:
                _run_init(run, init)
        except Cancelled:
            run.flush()
            raise
        run.flush()
        return run.finish()
    finally:
        lock.release()


def _lock_out_dir(out_dir: Path):
    """Take the output folder's exclusive lock (`out_dir/.sweep.lock`) or raise SweepBusyError."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(out_dir / LOCK_NAME), timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise SweepBusyError(f"another sweep is writing to {out_dir} right now (it holds {out_dir / LOCK_NAME}); "
                             "wait for it to finish (then resume=True / --resume continues it), or choose another "
                             "output folder") from None
    return lock


Todo = list[tuple[_Plan, int, list[tuple[int, int, np.ndarray]]]]  # [(plan, shots, [(trial, seed, rows)])]


@dataclass
class _SweepRun:
    """One run's shared state: the plans, the image cache of every image some trial uses, the trial rows
    (earlier ones included when resuming) and the progress bar, which counts this run's trials."""

    manifest_csv: str | Path
    manifest: Any
    cfg: SweepConfig
    out_dir: Path
    device: torch.device
    on_event: OnEvent | None
    stop: threading.Event | None
    checkpoint_dir: Path | None
    plans: list[_Plan]
    skipped: list[dict]
    warnings: list[str]
    rows: list[dict[str, Any]]
    finished: set[tuple]
    cache: Any = None  # engine.data.cache.ImageCache of the needed images, at the current init's size
    where: np.ndarray | None = None  # manifest row -> cache row (-1: not cached)
    sizes: dict[str, dict[str, Any]] = field(default_factory=dict)  # init -> engine.fewshot.sizes.init_sizes row
    by_size: Any = None  # engine.fewshot.sizes.CacheBySize of the needed images
    work: int = 0
    step: int = 0
    cache_dir: Path | None = None  # <cache_dir>/cache: decoded images, <cache_dir>/features: embeddings

    @classmethod
    def start(cls, manifest_csv, manifest, cfg: SweepConfig, out_dir: Path, device: torch.device,
              on_event: OnEvent | None, stop: threading.Event | None, resume: bool,
              checkpoint_dir: Path | None, cache_dir: Path) -> "_SweepRun":
        """Plan the episodes, read finished rows (resume), count the work and each init's input size."""
        df = manifest.df
        plans, skipped, warnings = _plan(df, cfg, on_event)
        done = read_trials(out_dir / "trials.csv") if resume else pd.DataFrame(columns=TRIAL_COLUMNS)
        rows: list[dict[str, Any]] = done.to_dict("records")
        run = cls(manifest_csv, manifest, cfg, out_dir, device, on_event, stop, checkpoint_dir, plans, skipped,
                  warnings, rows, {tuple(r[k] for k in KEY) for r in rows}, cache_dir=cache_dir)
        # Only images some trial trains or tests on are cached and embedded.
        needed = np.unique(np.concatenate(
            [p.test_idx for p in plans] + [e[2] for p in plans for eps in p.episodes.values() for e in eps]))
        run.where = np.full(len(df), -1, dtype=np.int64)
        run.where[needed] = np.arange(needed.size)
        # The bar counts trials (this run's, from 0 to `work`); caching, embedding and double full finetune's
        # stage one report their own counts in log lines only (engine.events.as_log).
        run.work = sum(len(eps) for i in cfg.inits for m in cfg.modes for _, _, eps in run.todo(i, m))
        emit(on_event, step=0, total=run.work,
             message=f"{run.work} trials to run" + (f" ({len(rows)} done earlier)" if rows else ""))
        # an explicit size off an init's training size is warned about: in the results and on the page
        run.sizes = init_sizes(cfg.inits, cfg.image_size, device, cfg.arch, checkpoint_dir, run.warnings, on_event)
        run.by_size = CacheBySize([df["path"].iloc[i] for i in needed], on_event, stop, cache_dir=cache_dir / "cache")
        return run

    def todo(self, init: str, mode: str) -> Todo:
        """Every (plan, shots, episodes not yet in trials.csv) of one init and mode."""
        return [(p, k, [e for e in eps if (p.finding, init, mode, k, e[0]) not in self.finished])
                for p in self.plans for k, eps in p.episodes.items()]

    def record(self, finding: str, init: str, mode: str, k: int, trial: int, seed: int, res: dict[str, float]) -> None:
        """Keep one trial's row and advance the bar."""
        self.rows.append({"finding": finding, "init": init, "mode": mode, "shots": k, "trial": trial, "seed": seed,
                          **res})
        self.step += 1
        emit(self.on_event, step=self.step, total=self.work, kind="metrics", metrics={"auc": res["auc"]},
             message=f"{finding} {init} {mode} {k}-shot trial {trial}: AUC {res['auc']:.3f}")

    def flush(self) -> None:
        """Rewrite trials.csv (atomically) with every row so far: the resumable state."""
        write_csv(pd.DataFrame(self.rows, columns=TRIAL_COLUMNS), self.out_dir / "trials.csv")

    def warn_unavailable(self, init: str, e: Exception) -> None:
        msg = f"init {init} skipped: {e}"
        self.warnings.append(msg)
        emit(self.on_event, message=msg, level="warning", kind="warning")
        self.skipped += [{"finding": p.finding, "init": init, "mode": m, "shots": k, "status": "unavailable",
                          "message": str(e)} for p in self.plans for m in self.cfg.modes for k in p.episodes]

    def finish(self) -> SweepResult:
        """Write summary.csv and the AUC-vs-shots plot; the result."""
        trials = pd.DataFrame(self.rows, columns=TRIAL_COLUMNS)
        summ = summarize(trials, self.cfg.n_bootstrap, self.cfg.seed, self.skipped)
        write_csv(summ, self.out_dir / "summary.csv")
        if "random" in set(trials["init"]) and trials["init"].nunique() > 1:
            write_csv(pd.DataFrame(paired_differences(trials, "random")), self.out_dir / "paired.csv")
        _write_plot(summ, self.out_dir / "auc_vs_shots.html")
        atomic_write(self.out_dir / "input_sizes.json", lambda tmp: Path(tmp).write_text(json.dumps(self.sizes)))
        emit(self.on_event, step=self.step, total=self.work, kind="result",
             message=f"sweep finished: {len(trials)} trials in {self.out_dir}")
        return SweepResult(trials, summ, self.out_dir, self.warnings, self.sizes)


def _run_init(run: _SweepRun, init: str) -> None:
    """Every pending trial of one init: load it once, then each mode (unavailable: summary rows + warning)."""
    cfg = run.cfg
    todo = {m: run.todo(init, m) for m in cfg.modes}
    if not any(eps for lst in todo.values() for _, _, eps in lst):
        return
    try:
        backbone = load_backbone(init, run.device, arch=cfg.arch, checkpoint_dir=run.checkpoint_dir)
    except InitUnavailableError as e:
        run.warn_unavailable(init, e)
        return
    run.cache = run.by_size.at(run.sizes[init]["image_size"])  # this init's input size
    cfg = dataclasses.replace(cfg, image_size=run.sizes[init]["image_size"])
    for mode in cfg.modes:
        if not any(eps for _, _, eps in todo[mode]):
            continue
        if mode == "probe":
            _probe_trials(run, init, backbone, todo[mode])
        elif mode == "finetune":
            _finetune_trials(run, init, backbone, todo[mode])
        else:
            start = backbone
            if mode == "double_full_finetune":
                test_rows = np.concatenate([p.test_idx for p in run.plans])
                start = stage_one_backbone(init, backbone, run.manifest_csv, run.manifest, test_rows, cfg,
                                           run.out_dir, run.device, as_log(run.on_event), run.stop,
                                           cache_dir=run.cache_dir / "cache")
            _full_finetune_trials(run, init, mode, start, todo[mode])


def _score(run: _SweepRun, p: _Plan, k: int, trial: int, seed: int, idx: np.ndarray, s_tr: np.ndarray,
           s_te: np.ndarray) -> dict[str, Any]:
    """One trial's row from its logits on its training rows and on the test pool."""
    return evaluate_trial(s_tr, p.labels[idx], s_te, p.labels[p.test_idx], run.cfg.n_bootstrap, seed,
                          p.sample(k, trial), p.shared.get(k))


def _probe_trials(run: _SweepRun, init: str, backbone: tuple[nn.Module, BackboneMeta], todo: Todo) -> None:
    """Probe trials: the cached images embedded once (the head recipe's `prepare` over all of them, features
    kept in the sweep's feature cache), then one probe per episode scored on its features."""
    cfg = run.cfg
    prep = prepare(backbone, run.cache, "probe", run.device, settings=cfg.head_settings,
                   feature_dir=run.cache_dir / "features", batch_size=cfg.embed_batch_size,
                   on_event=as_log(run.on_event), stop=run.stop)
    for p, k, eps in todo:
        for trial, seed, idx in eps:
            check_stop(run.stop)
            rows = run.where[idx]
            fitted = fit(prep, rows, p.labels[idx], seed)
            res = _score(run, p, k, trial, seed, idx, fitted.scores(prep, rows),
                         fitted.scores(prep, run.where[p.test_idx]))
            run.record(p.finding, init, "probe", k, trial, seed, res)
        run.flush()


def _finetune_trials(run: _SweepRun, init: str, backbone: tuple[nn.Module, BackboneMeta], todo: Todo) -> None:
    """The Classifier's finetune, one episode at a time: `fit_episode` on the episode's images with the trial
    seed (its activation cache's views drawn from that seed, as the Classifier's from its seed), scored through
    the assembled network on the training rows and the test pool."""
    from engine.fewshot.head_recipe import fit_episode

    cfg, where, array = run.cfg, run.where, run.cache.array
    for p, k, eps in todo:
        for trial, seed, idx in eps:
            check_stop(run.stop)
            fitted, _ = fit_episode(backbone, np.asarray(array[where[idx]]), p.labels[idx], "finetune", seed,
                                    run.device, settings=cfg.head_settings, stop=run.stop)
            res = _score(run, p, k, trial, seed, idx, fitted.logits(array, where[idx], cfg.embed_batch_size),
                         fitted.logits(array, where[p.test_idx], cfg.embed_batch_size))
            run.record(p.finding, init, "finetune", k, trial, seed, res)
            del fitted
        run.flush()


def _full_finetune_trials(run: _SweepRun, init: str, mode: str, start: tuple[nn.Module, BackboneMeta],
                          todo: Todo) -> None:
    """Full finetune trials from `start` (the init, or its stage-one backbone): a shot count's episodes vmapped
    together (`batch_trials`; default on CUDA only) or one by one, each scored on its train and test rows."""
    cfg, where, array = run.cfg, run.where, run.cache.array
    batched = cfg.batch_trials if cfg.batch_trials is not None else run.device.type == "cuda"
    prep = prepare(start, array, "full_finetune", run.device, settings=cfg.head_settings)
    for p, k, eps in todo:
        if not eps:
            continue
        for chunk in [eps] if batched else [[e] for e in eps]:
            check_stop(run.stop)
            fitted = fit_many(prep, [(where[idx], p.labels[idx], s) for _, s, idx in chunk], stop=run.stop,
                              batched=batched)
            for (trial, seed, idx), f in zip(chunk, fitted):
                res = _score(run, p, k, trial, seed, idx, f.logits(array, where[idx], cfg.embed_batch_size),
                             f.logits(array, where[p.test_idx], cfg.embed_batch_size))
                run.record(p.finding, init, mode, k, trial, seed, res)
            run.flush()


def _write_plot(summ: pd.DataFrame, path: Path) -> None:
    from engine.fewshot.plots import auc_vs_shots_figure

    fig = auc_vs_shots_figure(summ)
    atomic_write(path, lambda tmp: fig.write_html(tmp, include_plotlyjs=True, full_html=True))
