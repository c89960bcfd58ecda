"""CLI: `similarity` (SVCCA between image sets through a backbone, layer by layer)."""
from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "similarity",
        help="SVCCA between image sets at layers of a backbone: which pool is closest to a labeled set",
        description="Compares the first image set (the reference, e.g. your labeled images) with each of the "
                    "others (e.g. candidate pretraining pools): SVCCA (Raghu et al. 2017) of their activations at "
                    "each layer, units as the paired observations (see docs/design.md, 'Dataset similarity'). "
                    "Prints one row per candidate and layer, then the candidates ranked by mean SVCCA.")
    p.add_argument("sets", nargs="+", metavar="SET",
                   help="manifest CSV or image folder, optionally NAME=PATH; the first is the reference, "
                        "each other one is compared with it (at least two)")
    p.add_argument("--init", default=None,
                   help="backbone (see `python -m engine inits`); default: the best shipped backbone, else random")
    p.add_argument("--layers", default=None,
                   help="comma-separated module names (default: the four stages, e.g. layer1..layer4)")
    p.add_argument("--n-images", type=int, default=200, help="images per set (seeded sample; every set gets the same number)")
    p.add_argument("--image-size", type=int, default=None,
                   help="pixels (default: the backbone's own input size, `python -m engine inits`)")
    p.add_argument("--grid", type=int, default=4,
                   help="average-pool each layer's map to GRID x GRID positions (1 = global average pooling)")
    p.add_argument("--keep", type=float, default=0.99, help="variance fraction the SV step keeps (Raghu et al.: 0.99)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", default=None, help="arch of random/imagenet inits (default resnet18)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--out", default=None, help="folder for table.csv, ranking.csv, report.json, similarity.html")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object instead of tables")
    p.set_defaults(func=_similarity)


def parse_set(text: str) -> tuple[str | None, str]:
    """'NAME=PATH' -> (NAME, PATH); 'PATH' -> (None, PATH). A '=' inside a path that exists is kept."""
    from pathlib import Path

    if "=" in text and not Path(text).expanduser().exists():
        name, path = text.split("=", 1)
        if name.strip() and path.strip():
            return name.strip(), path.strip()
    return None, text


def _similarity(args) -> int:
    from engine.analysis.similarity import compare_sets, set_name
    from engine.models import default_init

    if len(args.sets) < 2:
        raise ValueError("give at least two image sets: the reference first, then one or more to compare with it")
    parsed = [parse_set(s) for s in args.sets]
    ref_name = parsed[0][0] or set_name(parsed[0][1], "reference")
    cands: dict[str, str] = {}
    for i, (name, path) in enumerate(parsed[1:], start=1):
        base = name or set_name(path, f"set{i}")
        n, j = base, 2
        while n in cands or n == ref_name:
            n, j = f"{base}-{j}", j + 1
        cands[n] = path
    init = args.init or default_init(args.arch)
    layers = [l.strip() for l in args.layers.split(",") if l.strip()] if args.layers else None
    rep = compare_sets(parsed[0][1], cands, init=init, layers=layers, n_images=args.n_images,
                       image_size=args.image_size, grid=args.grid, keep=args.keep, seed=args.seed,
                       device=args.device, arch=args.arch, reference_name=ref_name)
    if args.out:
        rep.write(args.out)
    if args.json:
        print(json.dumps({"settings": rep.settings, "closest": rep.closest, "ranking": rep.ranking.to_dict("records"),
                          "table": rep.table.to_dict("records")}))
        return 0
    s = rep.settings
    print(f"SVCCA with {s['reference']} through {s['init']} ({s['arch']}): {s['n_images']} images per set at "
          f"{s['image_size']} px, layers pooled to {s['grid']}x{s['grid']}, SV step keeps {s['keep']} of the variance")
    print(rep.table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print()
    print(rep.ranking.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(rep.sentence())
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
