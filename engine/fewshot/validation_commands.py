"""CLI: `validate` (a saved classifier on a labeled test manifest) and `score` (a folder or ZIP -> CSV).

    python -m engine validate --model M.safetensors --manifest test.csv --finding F [--split test]
    python -m engine score --model M.safetensors --source images/ (or batch.zip) --csv out.csv

`predict --csv out.csv` (engine.fewshot.commands) writes the same CSV for the images it is given.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("validate", help="measure a saved classifier on a labeled test manifest: AUC with interval, "
                                        "sensitivity/specificity with intervals, calibration")
    p.add_argument("--model", required=True, help="classifier file from `classify`")
    p.add_argument("--manifest", required=True, help="manifest CSV with a 0/1 column for the finding")
    p.add_argument("--finding", required=True)
    p.add_argument("--split", default=None, help="use only rows of this split (e.g. test); default every row")
    p.add_argument("--csv", default=None, help="also write the per-image scores as CSV")
    p.add_argument("--json", default=None, help="also write the full report (bins included) as JSON")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.set_defaults(func=_validate)

    p = sub.add_parser("score", help="score every image of a folder or ZIP with a saved classifier into a CSV")
    p.add_argument("--model", required=True, help="classifier file from `classify`")
    p.add_argument("--source", required=True, help="folder (searched recursively) or ZIP archive of images")
    p.add_argument("--csv", required=True, help="CSV to write: image, probability, verdict, unfamiliar, "
                                                "training_image, error")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_score)


def _progress(ev) -> None:
    if ev.message and ev.step is not None:
        print(ev.message, file=sys.stderr)


def _validate(args) -> int:
    """Prints the report's sentence and one strict-JSON line (the report without bins); exit 2 on bad input."""
    import numpy as np

    from engine.data.manifest import load_manifest
    from engine.device import resolve_device
    from engine.fewshot.classifier import Classifier
    from engine.fewshot.classifier.scoring import write_scores_csv
    from engine.fewshot.classifier.validation import validate_classifier

    clf = Classifier.load(args.model, device=resolve_device(args.device))
    if clf.finding != args.finding:
        print(f"warning: the classifier detects '{clf.finding}', the test labels are '{args.finding}'",
              file=sys.stderr)
    man = load_manifest(args.manifest)
    if args.finding not in man.findings:
        raise ValueError(f"'{args.finding}' is not a finding of {args.manifest}; it has: {', '.join(man.findings)}")
    lab = man.labels(args.finding)
    keep = ~np.isnan(lab)
    if args.split is not None:
        keep &= man.df["split"].astype(str).to_numpy() == args.split
    paths = man.df["path"].to_numpy()[keep]
    rep, rows = validate_classifier(clf, [(str(p), Path(p)) for p in paths], lab[keep], seed=args.seed)
    if args.csv:
        write_scores_csv(rows, args.csv)
    if args.json:
        Path(args.json).write_text(json.dumps(rep.to_dict(), allow_nan=False, indent=1))
    for w in rep.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(rep.sentence(), file=sys.stderr)
    d = rep.to_dict()
    d.pop("bins")
    print(json.dumps(d, allow_nan=False))
    return 0


def _score(args) -> int:
    """Writes the CSV; prints a one-line JSON summary. Exit 1 when some image could not be scored."""
    from engine.device import resolve_device
    from engine.fewshot.classifier import Classifier
    from engine.fewshot.classifier.scoring import iter_source, score_items, write_scores_csv

    clf = Classifier.load(args.model, device=resolve_device(args.device))
    rows = score_items(clf, iter_source(args.source), on_event=_progress)
    write_scores_csv(rows, args.csv)
    errors = sum(r.error is not None for r in rows)
    print(json.dumps({"csv": str(args.csv), "images": len(rows), "errors": errors,
                      "likely": sum(r.probability is not None and r.probability >= clf.threshold for r in rows),
                      "unfamiliar": sum(bool(r.unfamiliar) for r in rows),
                      "training_images": sum(r.training_image for r in rows)}))
    return 1 if errors else 0
