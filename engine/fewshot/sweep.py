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
* `probe` trials fit `fit_probe` on cached features (each image embedded once per init);
  `finetune` trials train backbone + head (`finetune_many`, several trials vmapped at once);
  `double_finetune` trials start from the init finetuned once on an intermediate finding.
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
from engine.fewshot.features import embed
from engine.fewshot.finetune import FinetuneConfig, finetune_many, predict_logits
from engine.fewshot.stage_one import stage_one_backbone
from engine.fewshot.probe import DEFAULT_C, fit_probe
from engine.fewshot.sizes import CacheBySize, check_inits as _check_inits, init_sizes
from engine.fewshot.trials import (GROUP, KEY, METRICS, TRIAL_COLUMNS, evaluate_trial, read_trials,  # noqa: F401
                                   summarize, write_csv)
from engine.models.registry import BackboneMeta, InitUnavailableError, load_backbone

MODES = ("probe", "finetune", "double_finetune")
SMALL_TEST = 30  # fewer test images than this in either class: the sweep warns that intervals are wide
LOCK_NAME = ".sweep.lock"  # held by the one sweep writing to an output folder


class SweepBusyError(RuntimeError):
    """Another sweep holds the output folder's lock; the message says what to do."""


# Fields that define what a trial row means: a resumed sweep must not change them.
PROTOCOL_FIELDS = ("image_size", "seed", "split_seed", "resample_test", "n_bootstrap", "test_fraction", "probe_C", "finetune", "arch",
                   "intermediate_manifest", "intermediate_finding", "intermediate_max_images")


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
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    arch: str | None = None  # arch of `random` / `imagenet` (default resnet18)
    # Finetune a shot count's trials in one vmapped pass. None = on CUDA only: on CPU, vmapped (grouped)
    # convolutions ran ~2x slower than one trial after another (bench/finetune_sweep.py).
    batch_trials: bool | None = None
    embed_batch_size: int = 64
    intermediate_manifest: str | None = None  # double_finetune: stage-one manifest (default: this one)
    intermediate_finding: str | None = None  # double_finetune: stage-one finding
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
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise ValueError(f"unknown mode(s) {bad}; choose from {', '.join(MODES)}")
        if not self.findings or not self.inits or not self.modes or not self.shots:
            raise ValueError("a sweep needs at least one finding, init, mode and shot count")
        if self.trials < 1 or min(self.shots) < 1:
            raise ValueError("trials and shots must be at least 1")
        if "double_finetune" in self.modes and not self.intermediate_finding:
            raise ValueError("mode double_finetune needs intermediate_finding (and optionally intermediate_manifest)")

    def to_dict(self) -> dict[str, Any]:
        """The fields, plus `uncertainty` (the method's words; not a field)."""
        return {**json.loads(json.dumps(dataclasses.asdict(self))), "uncertainty": self.uncertainty}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SweepConfig":
        d = dict(d)
        d.pop("uncertainty", None)
        ft = d.pop("finetune", None)
        tup = {k: tuple(v) for k, v in d.items() if isinstance(v, list)}
        ft_cfg = FinetuneConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in (ft or {}).items()})
        return cls(**{**d, **tup, "finetune": ft_cfg})


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

        old = {"resample_test": False, "split_seed": None,  # sweeps written before these fields: fixed test set
               **json.loads(cfg_path.read_text())}
        if cfg.image_size is None and old.get("image_size") is not None:
            cfg = dataclasses.replace(cfg, image_size=int(old["image_size"]))
        check_same_settings(old, cfg.to_dict(), what=f"the sweep in {out_dir}", only=PROTOCOL_FIELDS,
                            fix="Use another output folder for new settings")
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
        # The bar counts trials (this run's, from 0 to `work`); caching, embedding and double finetune's
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
            continue
        start = backbone
        if mode == "double_finetune":
            test_rows = np.concatenate([p.test_idx for p in run.plans])
            start = stage_one_backbone(init, backbone, run.manifest_csv, run.manifest, test_rows, cfg, run.out_dir,
                                       run.device, as_log(run.on_event), run.stop, cache_dir=run.cache_dir / "cache")
        _finetune_trials(run, init, mode, start, backbone[1], todo[mode])


def _probe_trials(run: _SweepRun, init: str, backbone: tuple[nn.Module, BackboneMeta], todo: Todo) -> None:
    """Probe trials: embed the cached images once, then fit and score one probe per episode."""
    cfg = run.cfg
    feats = embed(init, run.cache, run.device, cfg.embed_batch_size, arch=cfg.arch, on_event=as_log(run.on_event),
                  stop=run.stop, backbone=backbone, feature_dir=run.cache_dir / "features")
    for p, k, eps in todo:
        y_te = p.labels[p.test_idx]
        X_te = feats[run.where[p.test_idx]]
        for trial, seed, idx in eps:
            check_stop(run.stop)
            X_tr, y_tr = feats[run.where[idx]], p.labels[idx]
            probe = fit_probe(X_tr, y_tr, C=cfg.probe_C, seed=seed)
            res = evaluate_trial(probe.decision_function(X_tr), y_tr, probe.decision_function(X_te), y_te,
                                 cfg.n_bootstrap, seed, p.sample(k, trial), p.shared.get(k))
            run.record(p.finding, init, "probe", k, trial, seed, res)
        run.flush()


def _finetune_trials(run: _SweepRun, init: str, mode: str, start: tuple[nn.Module, BackboneMeta],
                     meta: BackboneMeta, todo: Todo) -> None:
    """Finetune trials from `start` (the init, or its stage-one backbone): a shot count's episodes vmapped
    together (`batch_trials`; default on CUDA only) or one by one, each scored on its train and test rows."""
    cfg, where, array = run.cfg, run.where, run.cache.array
    batched = cfg.batch_trials if cfg.batch_trials is not None else run.device.type == "cuda"
    for p, k, eps in todo:
        if not eps:
            continue
        y_te = p.labels[p.test_idx]
        for chunk in [eps] if batched else [[e] for e in eps]:
            check_stop(run.stop)
            imgs = [array[where[idx]] for _, _, idx in chunk]
            ys = [p.labels[idx] for _, _, idx in chunk]
            models = finetune_many(start, imgs, ys, cfg.finetune, run.device, [s for _, s, _ in chunk],
                                   stop=run.stop, batched=batched)
            for (trial, seed, idx), (bb, head) in zip(chunk, models):
                s_tr = predict_logits(bb, head, array, run.device, meta.mean, meta.std, cfg.embed_batch_size,
                                      rows=where[idx])
                s_te = predict_logits(bb, head, array, run.device, meta.mean, meta.std, cfg.embed_batch_size,
                                      rows=where[p.test_idx])
                res = evaluate_trial(s_tr, p.labels[idx], s_te, y_te, cfg.n_bootstrap, seed, p.sample(k, trial),
                                     p.shared.get(k))
                run.record(p.finding, init, mode, k, trial, seed, res)
            run.flush()


def _write_plot(summ: pd.DataFrame, path: Path) -> None:
    from engine.fewshot.plots import auc_vs_shots_figure

    fig = auc_vs_shots_figure(summ)
    atomic_write(path, lambda tmp: fig.write_html(tmp, include_plotlyjs=True, full_html=True))
