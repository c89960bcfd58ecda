"""Which augmentations and MoCo settings suit radiographs? A one-factor-at-a-time ablation at CPU scale.

Issue 20 item 2. The base is the shipped backbone's `long` recipe (engine/ssl/registry.py: crops 0.3-1,
jitter 0.4, noise 0.05, blur p 0.5; MoCo v2 with a BN head, m 0.99, T 0.2) scaled to a CPU: batch 32,
lr 0.0075 (0.06 x 32/256), queue 1024 (32 steps of keys, as 4096 is 16 steps at batch 256). Each variant
changes one thing (the list: VARIANTS). Every variant pretrains MoCo v2 for `--steps` steps at `--size` px
on the same seeded `--pool-images` subset of ../shared/data/cxr_pool (seed 0), then one probe sweep per
task (../shared/data/nih_pneumonia and kermany224, their own test splits) runs over random, the base and
every finished variant on the same episodes; d = variant AUC minus the base's in the same trial (and
minus random's), with the sweep's SE and wins.

What it can and cannot say: CPU scale (a few hundred steps at 64 px) ranks augmentations by how fast they
teach, not by where 300 GPU epochs at 224 px end; a difference within ~2 SE is no evidence either way.

    python bench/xray_recipe.py                          # all variants; ~15 min each on 2 free cores; resumable
    python bench/xray_recipe.py --variants base,rot10,histeq --steps 150
    python bench/xray_recipe.py --eval-only              # the table over the variants pretrained so far

Writes <workdir>/results.md and results.json (default artifacts/xray_recipe).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

# name -> (AugmentConfig overrides, MoCoConfig overrides): one change from the base each
BASE_AUG = {"crop_scale": (0.3, 1.0), "jitter": 0.4, "noise_std": 0.05, "blur_p": 0.5, "blur_sigma": (0.1, 2.0)}
BASE_OPT = {"queue": 1024, "m": 0.99, "T": 0.2, "head_bn": True, "head_out_bn": True}
VARIANTS: dict[str, tuple[dict, dict]] = {
    "base": ({}, {}),
    "no_jitter": ({"jitter": 0.0}, {}),  # MoCo-CXR used no brightness/contrast jitter
    "rot10": ({"rotate_deg": 10.0}, {}),  # MoCo-CXR's +-10 deg
    "histeq": ({"hist_eq_p": 0.5}, {}),  # Lightly's X-ray recipe equalizes
    "crop_0.08": ({"crop_scale": (0.08, 1.0)}, {}),  # SimCLR / the seed study
    "crop_0.6": ({"crop_scale": (0.6, 1.0)}, {}),  # near-full crops (MoCo-CXR: none)
    "gamma": ({"gamma": 0.3}, {}),
    "no_blur_noise": ({"blur_p": 0.0, "noise_std": 0.0}, {}),
    "T0.1": ({}, {"T": 0.1}),
    "queue4096": ({}, {"queue": 4096}),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--pool", default=str(DATA / "cxr_pool"))
    p.add_argument("--pool-images", type=int, default=3000, help="seeded subset of the pool (0 = all)")
    p.add_argument("--eval", default=f"{DATA / 'nih_pneumonia' / 'manifest.csv'},{DATA / 'kermany224' / 'manifest.csv'}")
    p.add_argument("--finding", default="pneumonia")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shots", default="5,20")
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--eval-only", action="store_true", help="only the table, over the variants already pretrained")
    p.add_argument("--workdir", default=str(ROOT / "artifacts" / "xray_recipe"))
    return p.parse_args(argv)


def pool_subset(pool: str, n: int) -> list[str]:
    """A seeded subset (numpy seed 0) of the pool's images, in the listing's order."""
    import numpy as np

    from engine.ssl.pretrain import resolve_image_paths

    paths = resolve_image_paths(pool)
    if n and n < len(paths):
        keep = np.sort(np.random.default_rng(0).choice(len(paths), n, replace=False))
        paths = [paths[i] for i in keep]
    return paths


def pretrain(name: str, args: argparse.Namespace, paths: list[str], work: Path) -> dict:
    """Pretrain one variant (resumable); its checkpoint json."""
    from engine.ssl import pretrain_from_data
    from engine.ssl.presets import build_config

    aug, opt = VARIANTS[name]
    cfg = build_config("moco_v2", "long", method_opts={**BASE_OPT, **opt}, aug_opts={**BASE_AUG, **aug},
                       epochs=10_000, max_steps=args.steps, batch_size=args.batch_size, lr=0.0075 * args.batch_size / 32,
                       image_size=args.size, seed=0, monitor_every_steps=max(1, args.steps // 4),
                       save_every_steps=max(1, args.steps // 8))
    ck = f"xr-{name}-{args.steps}s-{args.size}px"
    out = work / "checkpoints" / f"{ck}.safetensors"
    if not out.exists():
        t0 = time.time()
        print(f"pretraining {ck} ...", flush=True)
        pretrain_from_data(paths, cfg, ck, device=args.device, run_dir=work / "runs" / ck, resume=True,
                           checkpoint_dir=work / "checkpoints")
        print(f"  done in {time.time() - t0:.0f}s", flush=True)
    return {"name": ck, **json.loads(out.with_suffix(".json").read_text())}


def table(args: argparse.Namespace, names: dict[str, str], work: Path) -> tuple[list[str], list[dict]]:
    """One probe sweep per task over random + every pretrained variant; rows vs base and vs random."""
    from engine.fewshot.metrics import paired_differences
    from engine.fewshot.sweep import SweepConfig, run_sweep

    lines, rows = [], []
    ref = names.get("base")
    for manifest in [m for m in args.eval.split(",") if m]:
        task = Path(manifest).parent.name
        inits = ("random", *names.values())
        scfg = SweepConfig(findings=(args.finding,), inits=inits, modes=("probe",),
                           shots=tuple(int(s) for s in args.shots.split(",")), trials=args.trials,
                           image_size=args.size, seed=0)
        print(f"probe sweep on {task} over {len(inits)} inits ...", flush=True)
        res = run_sweep(manifest, scfg, work / f"sweep-{task}-{len(inits)}", args.device, resume=True)
        lines += [f"## {task}", "", "| variant | shots | AUC | d vs base (SE, wins) | d vs random (SE, wins) |",
                  "|---|---|---|---|---|"]
        vs_random = {(r["init"], r["shots"]): r for r in paired_differences(res.trials, "random")}
        vs_base = {(r["init"], r["shots"]): r for r in paired_differences(res.trials, ref)} if ref else {}
        for variant, ck in names.items():
            for (init, shots), r in sorted(vs_random.items(), key=lambda kv: kv[0][1]):
                if init != ck:
                    continue
                b = vs_base.get((ck, shots))
                vb = f"{b['diff']:+.3f} ({b['se']:.3f}, {b['wins']}/{b['n']})" if b else "(the base)"
                lines.append(f"| {variant} | {shots} | {r['auc']:.3f} | {vb} | "
                             f"{r['diff']:+.3f} ({r['se']:.3f}, {r['wins']}/{r['n']}) |")
                rows.append({"task": task, "variant": variant, "shots": shots, "vs_random": r, "vs_base": b})
        lines.append("")
    return lines, rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.workdir).resolve()
    os.environ.setdefault("SCARCE_CXR_WORKSPACE", str(work / "workspace"))
    os.environ["SCARCE_CXR_CHECKPOINTS"] = str(work / "checkpoints")
    work.mkdir(parents=True, exist_ok=True)
    wanted = [v for v in args.variants.split(",") if v]
    unknown = [v for v in wanted if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    names, seconds = {}, {}
    if not args.eval_only:
        paths = pool_subset(args.pool, args.pool_images)
        print(f"{len(paths)} pool images, {args.steps} steps at {args.size} px, batch {args.batch_size}", flush=True)
        for v in wanted:
            info = pretrain(v, args, paths, work)
            names[v], seconds[v] = info["name"], info.get("train_seconds")
    else:
        for v in wanted:
            ck = work / "checkpoints" / f"xr-{v}-{args.steps}s-{args.size}px.json"
            if ck.exists():
                names[v], seconds[v] = ck.stem, json.loads(ck.read_text()).get("train_seconds")
    if not names:
        raise SystemExit("no variant pretrained yet")
    head = [f"# X-ray recipe ablation: MoCo v2, {args.steps} steps, batch {args.batch_size}, {args.size} px, "
            f"{args.pool_images or 'all'} pool images (seed 0)",
            "base = the long recipe at CPU scale; each variant changes one thing (bench/xray_recipe.py VARIANTS); "
            f"probe on '{args.finding}', {args.trials} paired trials; d = AUC difference in the same trial",
            "", "training seconds: " + ", ".join(f"{v} {s}" for v, s in seconds.items()), ""]
    lines, rows = table(args, names, work)
    text = "\n".join(head + lines)
    print(text, flush=True)
    (work / "results.md").write_text(text + "\n")
    (work / "results.json").write_text(json.dumps({"args": vars(args), "variants": VARIANTS, "rows": rows},
                                                  indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
