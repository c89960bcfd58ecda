"""Which pretraining pool is closest to a labeled set? SVCCA through one backbone, measured side by side.

For each labeled set (default: the two real few-shot tasks in ../shared/data, nih_pneumonia (adult) and
kermany224 (paediatric)), `--n` images of it (seeded) are compared layer by layer with:

- `other half`: `--n` *other* images of the same set (the in-domain ceiling: same distribution, no
  shared image);
- each candidate pool (default: cxr_pool, the 11k unlabeled adult radiographs, and the other labeled set);
- `shuffled`: the same `--n` images with their pixels shuffled (same histogram, no anatomy: the floor).

Printed: SVCCA per layer and its mean over layers, each with the chance level (units shuffled), and
for every labeled set the ratio (pool - shuffled) / (other half - shuffled) = the share of the way
from "not an X-ray" to "the same dataset" a pool reaches. Nothing is written unless `--out`.

    .venv/bin/python bench/dataset_similarity.py                       # ~15 min on 2 busy CPU cores (activations of 7 x 200 images at 224 px)
    .venv/bin/python bench/dataset_similarity.py --init random --n 100 --size 128
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--labeled", default=f"nih_pneumonia={DATA / 'nih_pneumonia' / 'manifest.csv'},"
                                        f"kermany224={DATA / 'kermany224' / 'manifest.csv'}",
                   help="comma-separated NAME=PATH labeled sets (manifest CSVs or folders)")
    p.add_argument("--pools", default=f"cxr_pool={DATA / 'cxr_pool'}", help="comma-separated NAME=PATH candidate pools")
    p.add_argument("--init", default="cxr-moco_v2-resnet18-224", help="backbone (python -m engine inits)")
    p.add_argument("--n", type=int, default=200, help="images per set")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--grid", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="write results.json here")
    return p.parse_args(argv)


def named(text: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, path = item.split("=", 1) if "=" in item else (Path(item).stem, item)
        out[name] = path
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import numpy as np

    from engine.analysis.similarity import _load, _paths, default_layers, layer_activations, set_similarity, shuffle_pixels
    from engine.device import resolve_device
    from engine.models import load_backbone

    t0 = time.time()
    device = resolve_device(args.device)
    model, meta = load_backbone(args.init, device)
    layers = default_layers(model)
    labeled, pools = named(args.labeled), named(args.pools)

    def acts(images: np.ndarray) -> dict[str, np.ndarray]:
        return layer_activations(model, images, layers, device, meta.mean, meta.std, args.grid)

    halves, sets = {}, {}
    for name, path in labeled.items():  # 2n images: the reference and its disjoint other half
        imgs = _load(_paths(path), 2 * args.n, args.size, args.seed, None, None, None)
        order = np.random.default_rng(args.seed).permutation(len(imgs))
        ref, other = imgs[order[: args.n]], imgs[order[args.n:]]
        sets[name], halves[name] = acts(ref), acts(other)
        sets[f"{name} shuffled"] = acts(shuffle_pixels(ref, args.seed))
    for name, path in pools.items():
        sets[name] = acts(_load(_paths(path), args.n, args.size, args.seed, None, None, None))
    results = {}
    print(f"SVCCA through {args.init}, {args.n} images per set at {args.size} px, grid {args.grid}, keep 0.99; "
          f"layers {', '.join(layers)}")
    for ref in labeled:
        cands = {"other half": halves[ref], **{k: sets[k] for k in [*pools, *labeled] if k != ref},
                 "shuffled": sets[f"{ref} shuffled"]}
        rows = {}
        print(f"\n{ref} (reference)           " + "  ".join(f"{l:>7}" for l in layers) + "     mean  chance")
        for cname, c in cands.items():
            r = [set_similarity(sets[ref][l], c[l], layer=l, seed=args.seed) for l in layers]
            v, ch = [x["svcca"] for x in r], [x["chance"] for x in r]
            rows[cname] = {"svcca": dict(zip(layers, v)), "chance": dict(zip(layers, ch)),
                           "mean": float(np.mean(v)), "mean_chance": float(np.mean(ch))}
            print(f"  {cname:<24}" + "  ".join(f"{x:7.3f}" for x in v) + f"  {np.mean(v):7.3f}  {np.mean(ch):6.3f}", flush=True)
        top, floor = rows["other half"]["mean"], rows["shuffled"]["mean"]
        ranked = sorted((k for k in rows if k not in ("other half", "shuffled")), key=lambda k: -rows[k]["mean"])
        for k in ranked:
            rows[k]["share"] = (rows[k]["mean"] - floor) / (top - floor)
        print("  closest pool: " + ", then ".join(f"{k} (share {rows[k]['share']:.2f})" for k in ranked))
        results[ref] = rows
    print(f"\n{time.time() - t0:.0f} s")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
