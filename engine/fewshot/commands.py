"""CLI: `sweep` (AUC-vs-shots trials), `classify` (build a clinician classifier), `predict` (apply it)."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in _csv_list(text)]
    except ValueError:
        raise ValueError(f"--shots must be comma-separated whole numbers, got {text!r}") from None


def register(sub) -> None:
    p = sub.add_parser("sweep", help="few-shot AUC-vs-shots sweep: findings x inits x modes x shots x trials")
    p.add_argument("--manifest", required=True, help="manifest CSV")
    p.add_argument("--finding", action="append", required=True, help="finding to evaluate (repeatable)")
    p.add_argument("--inits", default="random", help="comma-separated inits (see `python -m engine inits`)")
    p.add_argument("--modes", default="probe",
                   help="comma-separated: probe; finetune (the Classifier's: last stage + head on cached activations); "
                        "full_finetune (whole backbone, the seed study's); double_full_finetune (full_finetune after "
                        "a whole-backbone finetune on --intermediate-finding)")
    p.add_argument("--shots", default="1,5,10,20,50", help="comma-separated shots per class")
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--out", required=True, help="output folder (trials.csv, summary.csv, auc_vs_shots.html)")
    p.add_argument("--image-size", type=int, default=None,
                   help="pixels for every init (default: each init at its own input size, `python -m engine inits`; "
                        "a size given here is honoured and each init trained at another size is warned about)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-seed", type=int, default=None,
                   help="seed of the test hold-out (manifests without a split column) and of each trial's "
                        "patient-level test resample (default: --seed)")
    p.add_argument("--arch", default=None, help="arch of random/imagenet inits (default resnet18)")
    p.add_argument("--finetune-steps", type=int, default=None,
                   help="step budget of finetune and full_finetune (default 50 each)")
    p.add_argument("--intermediate-finding", default=None, help="double_full_finetune: stage-one finding")
    p.add_argument("--intermediate-manifest", default=None, help="double_full_finetune: stage-one manifest")
    p.add_argument("--resume", action="store_true", help="continue a sweep in --out; finished trials are kept")
    p.add_argument("--cache-dir", default=None,
                   help="where decoded images and embeddings are cached (default: <out>/.cache; give a workspace "
                        "folder to share its caches)")
    p.set_defaults(func=_sweep)

    p = sub.add_parser("classify", help="build a classifier for one finding from a labeled manifest")
    p.add_argument("--manifest", required=True)
    p.add_argument("--finding", required=True)
    p.add_argument("--init", default=None,
                   help="starting backbone (see `python -m engine inits`); default: the best shipped backbone "
                        "(pretrained on real chest X-rays), else random")
    p.add_argument("--out", required=True, help="classifier file to write (.safetensors)")
    p.add_argument("--mode", choices=["probe", "finetune"], default="probe",
                   help="probe: logistic regression on frozen features; finetune: the last stage + head on cached "
                        "activations (the sweep's finetune is the same model)")
    p.add_argument("--image-size", type=int, default=None,
                   help="pixels (default: the init's own input size, `python -m engine inits`)")
    p.add_argument("--cv-repeats", type=int, default=None,
                   help="cross-validation repeats (default 10 for probe, 1 for finetune)")
    p.add_argument("--calibration", choices=["platt", "isotonic"], default="platt",
                   help="how scores become probabilities, fitted on the cross-validated scores (default platt)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", default=None)
    p.set_defaults(func=_classify)

    p = sub.add_parser("predict", help="apply a saved classifier; one JSON line per image")
    p.add_argument("--model", required=True, help="classifier file from `classify`")
    p.add_argument("images", nargs="+", help="image files (PNG/JPEG/TIFF/DICOM)")
    p.add_argument("--device", default="auto")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--sensitivity", type=float, default=None,
                   help="operating point: the cut-off whose cross-validated sensitivity is at least this (e.g. 0.9)")
    g.add_argument("--specificity", type=float, default=None,
                   help="operating point: the cut-off whose cross-validated specificity is at least this")
    p.add_argument("--csv", default=None, help="also write a CSV: image, probability, verdict, unfamiliar, "
                                               "training_image, error (formula-leading cells escaped)")
    g.add_argument("--equal", action="store_true",
                   help="operating point: equal cross-validated sensitivity and specificity (default: Youden's J, "
                        "the highest sensitivity + specificity)")
    p.add_argument("--prevalence", type=float, default=None,
                   help="expected share of patients with the finding where the classifier is used (e.g. 0.05): adds "
                        "prevalence-adjusted probabilities and PPV/NPV at the operating point")
    p.add_argument("--force", action="store_true",
                   help="score even with a classifier marked NOT usable (for checking only; its answers are not "
                        "to be relied on)")
    p.set_defaults(func=_predict)


def _log(ev) -> None:
    if ev.kind == "warning" or ev.level == "warning":
        print(f"warning: {ev.message}", file=sys.stderr)
    elif ev.kind in ("metrics", "result") and ev.message:
        print(ev.message, file=sys.stderr)


def _sweep(args) -> int:
    import dataclasses

    from engine.device import resolve_device
    from engine.fewshot.fast_finetune import FastFinetune
    from engine.fewshot.finetune import FinetuneConfig
    from engine.fewshot.sweep import SweepConfig, run_sweep

    ft, full = FastFinetune(), FinetuneConfig()
    if args.finetune_steps is not None:
        ft = dataclasses.replace(ft, steps=args.finetune_steps)
        full = dataclasses.replace(full, steps=args.finetune_steps)
    cfg = SweepConfig(
        findings=tuple(args.finding), inits=tuple(_csv_list(args.inits)), modes=tuple(_csv_list(args.modes)),
        shots=tuple(_int_list(args.shots)), trials=args.trials, image_size=args.image_size, seed=args.seed,
        arch=args.arch, finetune=ft, full_finetune=full, intermediate_finding=args.intermediate_finding,
        intermediate_manifest=args.intermediate_manifest, split_seed=args.split_seed,
    )
    res = run_sweep(args.manifest, cfg, Path(args.out), resolve_device(args.device), on_event=_log, resume=args.resume,
                    cache_dir=Path(args.cache_dir) if args.cache_dir else None)  # None: under --out, never the repo
    cols = ["finding", "init", "mode", "shots", "status", "n_trials", "auc_mean", "auc_std", "auc_ci_low", "auc_ci_high"]
    print(res.summary[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if (res.out_dir / "paired.csv").exists():
        import pandas as pd

        from engine.fewshot.metrics import uncertainty_text
        from engine.fewshot.trials import paired_appendix_table

        paired = pd.read_csv(res.out_dir / "paired.csv")
        print("\nPaired difference d vs random: d ± SE (wins/trials)")
        print(paired_appendix_table(paired).to_string(index=False))
        print(uncertainty_text(str(paired["uncertainty"].iloc[0])) if len(paired) else "")
    print(json.dumps({"trials": str(res.out_dir / "trials.csv"), "summary": str(res.out_dir / "summary.csv"),
                      "plot": str(res.out_dir / "auc_vs_shots.html")}))
    return 0


def _classify(args) -> int:
    from engine.device import resolve_device
    from engine.fewshot.classifier import build_classifier
    from engine.models import default_init

    init = args.init or default_init(args.arch)
    if args.init is None:
        print(f"init: {init} (the default; --init chooses another)", file=sys.stderr)
    clf, est = build_classifier(
        init=init, mode=args.mode, device=resolve_device(args.device), image_size=args.image_size,
        seed=args.seed, cv_repeats=args.cv_repeats, on_event=_log, manifest=args.manifest, finding=args.finding,
        arch=args.arch, calibration=args.calibration,
    )
    path = clf.save(args.out)
    op, use = clf.operating, clf.usability
    if not use.usable:
        print(f"warning: {use.sentence()}", file=sys.stderr)
    print(json.dumps({"model": str(path), "init": init, "usable": use.usable, "unusable_reasons": list(use.reasons),
                      "threshold": clf.threshold, "threshold_ci": op.threshold_ci,
                      **{k: getattr(est, k) for k in ("auc", "ci_low", "ci_high", "n_positive", "n_negative", "folds",
                                                      "repeats")},
                      "training_prevalence": clf.training_prevalence, "calibration": clf.calibration.method,
                      "operating_point": op.rule, "cv_sensitivity": op.sensitivity,
                      "cv_sensitivity_ci": op.sensitivity_ci, "cv_specificity": op.specificity,
                      "cv_specificity_ci": op.specificity_ci, "familiarity_threshold": clf.familiarity.threshold},
                     allow_nan=False))
    return 0


def _operating_point(clf, args):
    if args.sensitivity is not None:
        return clf.operating_point_replicates("sensitivity", args.sensitivity)
    if args.specificity is not None:
        return clf.operating_point_replicates("specificity", args.specificity)
    return clf.operating_point_replicates("equal" if args.equal else "youden")


def _finite(v):
    """A float, or None for NaN / missing (strict JSON has no NaN); pairs element-wise."""
    import math

    if isinstance(v, (tuple, list)):
        return [_finite(x) for x in v]
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def _prevalence_fields(clf, op, rep, prevalence: float) -> dict:
    """prevalence, training_prevalence, adjusted_threshold, ppv/npv (+ intervals) at the operating point."""
    from engine.fewshot.classifier.operating import adjust_to_prevalence, check_prevalence, predictive_at

    prevalence = check_prevalence(prevalence)
    out = {"prevalence": prevalence, "training_prevalence": clf.training_prevalence,
           "adjusted_threshold": float(adjust_to_prevalence(op.threshold, clf.training_prevalence, prevalence))}
    if rep is not None:
        pv = predictive_at(op, rep, prevalence)
        out.update(ppv=_finite(pv.ppv), ppv_ci=_finite(list(pv.ppv_ci)), npv=_finite(pv.npv),
                   npv_ci=_finite(list(pv.npv_ci)))
    return out


def _predict(args) -> int:
    """One strict-JSON line per image (`json.dumps(allow_nan=False)`): image, probability (calibrated), label,
    threshold, finding, calibration, operating_point, cv_sensitivity(_ci), cv_specificity(_ci), threshold_ci,
    usable, unfamiliar, familiarity_distance, familiarity_threshold, training_image; with --prevalence also
    prevalence, training_prevalence, adjusted_probability, adjusted_threshold, ppv(_ci), npv(_ci); or image, error
    (`--csv`: also as CSV). Exit 1 when any image got an error (an unreadable file, or a NaN/infinite score), 2 when
    the classifier file itself is refused: damaged, or marked NOT usable (unless --force)."""
    from engine.data.io import ImageReadError
    from engine.device import resolve_device
    from engine.fewshot.classifier import Classifier, ClassifierScoreError
    from engine.fewshot.classifier.operating import adjust_to_prevalence, check_prevalence
    from engine.fewshot.classifier.scoring import ScoreRow, is_training_image, write_scores_csv

    if args.prevalence is not None:
        check_prevalence(args.prevalence)  # ValueError -> the CLI's error line, before any work
    clf = Classifier.load(args.model, device=resolve_device(args.device))  # ClassifierLoadError -> exit 2
    use = clf.usability
    if not use.usable and not args.force:
        print(f"error: {args.model} is refused: {use.sentence()} (--force scores anyway, for checking only)",
              file=sys.stderr)
        return 2
    if not use.usable:
        print(f"warning: {use.sentence()}", file=sys.stderr)
    op, rep = _operating_point(clf, args)
    extra = {"operating_point": op.rule if op.target is None else f"{op.rule}>={op.target:g}",
             "threshold_ci": _finite(op.threshold_ci), "cv_sensitivity": _finite(op.sensitivity),
             "cv_sensitivity_ci": _finite(op.sensitivity_ci), "cv_specificity": _finite(op.specificity),
             "cv_specificity_ci": _finite(op.specificity_ci), "usable": use.usable}
    if args.prevalence is not None:
        extra.update(_prevalence_fields(clf, op, rep, args.prevalence))
    failed = 0
    rows: list[ScoreRow] = []  # the --csv rows, from the same scores as the JSON lines (each image read once more
    for path in args.images:  # only for its pixel key, and only when the classifier recorded training keys)
        same_pixels = None
        try:
            pred = clf.predict([path], threshold=op.threshold)[0]
            same_pixels = is_training_image(clf, path)
            out = {**pred, **extra,  # a training image: the same pixels, or (nearly) the same features
                   "training_image": bool(same_pixels or pred.get("training_image"))}
            if args.prevalence is not None:
                out["adjusted_probability"] = float(adjust_to_prevalence(out["probability"], clf.training_prevalence,
                                                                         args.prevalence))
            line = json.dumps({"image": path, **out}, allow_nan=False)
            rows.append(ScoreRow(path, float(pred["probability"]),
                                 f"{clf.finding} {'likely' if pred['label'] else 'unlikely'}",
                                 bool(pred["unfamiliar"]), bool(same_pixels)))
        except (ImageReadError, FileNotFoundError, ClassifierScoreError) as e:  # one bad file does not stop the others
            failed += 1
            line = json.dumps({"image": path, "error": str(e)}, allow_nan=False)
            rows.append(ScoreRow(path, None, None, None, bool(same_pixels), str(e)))
        except ValueError as e:  # allow_nan=False refused a non-finite number: an error row, never NaN
            failed += 1
            msg = f"the answer held a non-finite number ({e}); no result given"
            line = json.dumps({"image": path, "error": msg})
            rows.append(ScoreRow(path, None, None, None, bool(same_pixels), msg))
        print(line, flush=True)
    if args.csv:
        write_scores_csv(rows, args.csv)
    return 1 if failed else 0
