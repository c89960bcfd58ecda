"""The Classifier's finetune, old vs new, side by side on the same 23 real labeled X-rays (issue 12 item 4).

old: today's finetune before this change -- the whole backbone + head on whole images (`FinetuneConfig()`,
     50 steps, batch 16), 3 repeats of 5-fold cross-validation + the final fit (16 trainings).
new: `FastFinetune()` -- the last stage + head on cached frozen-stage activations (4 augmented views + the
     clean one per image, computed once), 1 repeat of 5-fold cross-validation + the final fit (6 trainings).

Both start from the same backbone (default: the best shipped one) and use the same 23 images: 12 pneumonia
and 11 normal from Kermany's paediatric training split (../shared/data/kermany224), drawn with a fixed seed.
Quality: the cross-validated AUC estimate, and the AUC of the final classifier on held-out Kermany test
images (never used for training). Time: wall seconds of the whole build, measured in this one run, in the
same process, one after the other, under `--threads` torch threads (2 = the laptop of the issue).
The page's expected time (`estimate_seconds`) is printed beside the measured one.

Measured 2026-11-29 on the project's shared 2-core machine (load 4-10 from other work; `--old-repeats 1
--n-test 100`, init cxr-moco_v2-resnet18-224): new 289 s, CV AUC 0.902 (0.756-1.000), held-out AUC 0.898;
old (same 6 trainings) 1998 s, CV AUC 0.962 (0.865-1.000), held-out AUC 0.884. old/new 6.9x side by side;
today's 3-repeat old build extrapolated 5327 s = 18.4x. The page's expected time for the new build said
106 s: it is measured when the page opens, and this run shared the CPU with a browser test meanwhile.

    .venv/bin/python bench/classifier_finetune.py                     # full comparison (the old side: ~40 min on 2 cores)
    .venv/bin/python bench/classifier_finetune.py --old-repeats 1     # old side with 1 CV repeat (6 trainings); its
                                                                      # 3-repeat time is then also extrapolated
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "kermany224"),
                    help="a folder with manifest.csv (path, split, pneumonia)")
    ap.add_argument("--init", default=None, help="backbone (default: the best shipped one)")
    ap.add_argument("--n-pos", type=int, default=12)
    ap.add_argument("--n-neg", type=int, default=11)
    ap.add_argument("--n-test", type=int, default=200, help="held-out test images for the final classifiers' AUC")
    ap.add_argument("--old-repeats", type=int, default=3, help="CV repeats of the old side (today's default: 3)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-old", action="store_true", help="measure the new side only")
    args = ap.parse_args()

    import pandas as pd
    import torch

    torch.set_num_threads(args.threads)
    from engine.fewshot.finetune import FastFinetune, FinetuneConfig
    from engine.models import default_init

    root = Path(args.data)
    man = pd.read_csv(root / "manifest.csv")
    tr, te = man[man.split == "train"], man[man.split == "test"]
    sel = pd.concat([tr[tr.pneumonia == 1].sample(args.n_pos, random_state=args.seed),
                     tr[tr.pneumonia == 0].sample(args.n_neg, random_state=args.seed)])
    test = te.sample(min(args.n_test, len(te)), random_state=args.seed + 1)
    imgs, y = [str(root / p) for p in sel.path], sel.pneumonia.to_numpy()
    test_imgs, test_y = [str(root / p) for p in test.path], test.pneumonia.to_numpy()
    init = args.init or default_init()
    print(f"{len(imgs)} training images ({args.n_pos} pneumonia, {args.n_neg} normal), {len(test_imgs)} held-out test "
          f"images, init {init}, {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs", flush=True)

    data = (imgs, y, test_imgs, test_y, init, args.seed)
    rows = [_measure("new: last stage on cached activations", FastFinetune(), 1, *data)]
    if not args.skip_old:
        rows.append(_measure(f"old: whole backbone, {args.old_repeats} repeat(s)", FinetuneConfig(), args.old_repeats,
                             *data))
    _report(rows, args.old_repeats)


def _measure(name: str, cfg, repeats: int, imgs: list[str], y, test_imgs: list[str], test_y, init: str,
             seed: int) -> dict:
    """Build one finetune classifier with `cfg`, timed; its CV estimate and its AUC on the held-out images."""
    from engine.fewshot.classifier import build_classifier, estimate_seconds
    from engine.fewshot.finetune import FastFinetune
    from engine.fewshot.metrics import auc

    est_s = estimate_seconds(len(imgs), "finetune", cv_repeats=repeats)["seconds"] if isinstance(cfg, FastFinetune) \
        else None
    t0 = time.perf_counter()
    clf, est = build_classifier(imgs, y, init=init, mode="finetune", finding="pneumonia", cv_repeats=repeats,
                                finetune_cfg=cfg, seed=seed)
    secs = time.perf_counter() - t0
    p = [r["probability"] for r in clf.predict(test_imgs)]
    row = {"side": name, "trainings": repeats * est.folds + 1, "seconds": secs, "cv_auc": est.auc,
           "cv_ci": f"{est.ci_low:.3f}-{est.ci_high:.3f}", "test_auc": auc(test_y, p), "expected_s": est_s}
    print(row, flush=True)
    return row


def _report(rows: list[dict], old_repeats: int) -> None:
    """The table, and the old / new time and AUC differences when both sides ran."""
    import pandas as pd

    df = pd.DataFrame(rows)
    print()
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if len(rows) == 2:
        new, old = rows
        per_old = old["seconds"] / old["trainings"]
        print(f"\nold / new time: {old['seconds'] / new['seconds']:.1f}x (measured side by side)")
        if old_repeats != 3:
            print(f"old with today's 3 repeats (16 trainings), extrapolated from its {old['trainings']} measured: "
                  f"{per_old * 16:.0f} s = {per_old * 16 / new['seconds']:.1f}x the new build")
        print(f"test AUC new - old: {new['test_auc'] - old['test_auc']:+.3f}; CV AUC new - old: "
              f"{new['cv_auc'] - old['cv_auc']:+.3f}")

if __name__ == "__main__":
    main()
