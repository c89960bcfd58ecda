"""CLI for the data layer: `info`, `manifest check`, `manifest from-*`, `phantom`, `cache`."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("info", help="read an image (PNG/JPEG/TIFF/DICOM) and print one JSON object")
    p.add_argument("file")
    p.set_defaults(func=_info)

    p = sub.add_parser("manifest", help="check or create manifest CSVs")
    msub = p.add_subparsers(dest="manifest_command", required=True, metavar="ACTION")
    c = msub.add_parser("check", help="per-finding positive/negative/unknown counts, or the list of problems")
    c.add_argument("csv")
    c.set_defaults(func=_manifest_check)
    c = msub.add_parser("from-folder", help="folder-per-class tree -> manifest.csv")
    c.add_argument("root")
    c.add_argument("--out", required=True, help="manifest CSV to write")
    c.set_defaults(func=_from_folder)
    c = msub.add_parser("from-nih", help="NIH ChestX-ray14 (Data_Entry_2017*.csv, BBox_List_2017.csv, images*/) -> manifest.csv")
    c.add_argument("root")
    c.add_argument("--out", required=True)
    c.add_argument("--no-check-files", action="store_true", help="keep rows whose image file is not present")
    c.set_defaults(func=_from_nih)
    c = msub.add_parser("from-padchest", help="PadChest official CSV + ImageDir subfolders -> manifest.csv")
    c.add_argument("csv", help="PADCHEST_chest_x_ray_images_labels_160K*.csv(.gz)")
    c.add_argument("--images", default=None, help="folder holding the ImageDir subfolders (default: beside the CSV)")
    c.add_argument("--projections", default="PA,AP", help="comma-separated Projection values to keep")
    c.add_argument("--out", required=True)
    c.add_argument("--no-check-files", action="store_true")
    c.set_defaults(func=_from_padchest)
    c = msub.add_parser("findings", help="findings with at least N positive patients")
    c.add_argument("csv")
    c.add_argument("--min-patients", type=int, default=20)
    c.set_defaults(func=_findings)

    p = sub.add_parser("phantom", help="write a synthetic chest radiograph workspace with lesion masks")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_phantom)

    p = sub.add_parser("cache", help="build the uint8 resolution cache for a manifest")
    p.add_argument("csv")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--mode", choices=["pad", "crop"], default="pad")
    p.set_defaults(func=_cache)


def _info(args) -> int:
    from engine.data.io import read_image

    img, meta = read_image(Path(args.file))
    out = {**meta.to_dict(), "min": float(img.min()), "max": float(img.max()), "mean": float(img.mean())}
    print(json.dumps(out))
    return 0


def _manifest_check(args) -> int:
    from engine.data.manifest import ManifestError, load_manifest

    try:
        m = load_manifest(args.csv)
    except ManifestError as e:
        print(json.dumps({"ok": False, "problems": e.problems}, indent=2, ensure_ascii=False))
        return 1
    print(json.dumps({"ok": True, "rows": len(m.df), "findings": m.counts()}, indent=2, ensure_ascii=False))
    return 0


def _from_folder(args) -> int:
    from engine.data.adapters import from_folder_tree

    print(from_folder_tree(args.root, args.out))
    return 0


def _from_nih(args) -> int:
    from engine.data.adapters import from_nih

    print(from_nih(args.root, args.out, check_files=not args.no_check_files))
    return 0


def _from_padchest(args) -> int:
    from engine.data.adapters import from_padchest

    projections = [p.strip() for p in args.projections.split(",") if p.strip()]
    print(from_padchest(args.csv, args.out, images_root=args.images, projections=projections,
                        check_files=not args.no_check_files))
    return 0


def _findings(args) -> int:
    from engine.data.adapters import findings_with_min_patients
    from engine.data.manifest import load_manifest

    m = load_manifest(args.csv, check_files=False)
    for finding, n in findings_with_min_patients(m, args.min_patients):
        print(json.dumps({"finding": finding, "positive_patients": n}))
    return 0


def _phantom(args) -> int:
    from engine.data.phantom import generate

    print(generate(Path(args.out), n=args.n, size=args.size, seed=args.seed))
    return 0


def _cache(args) -> int:
    from engine.data.cache import ImageCache
    from engine.data.manifest import load_manifest

    m = load_manifest(args.csv)
    c = ImageCache.build(list(m.df["path"]), size=args.size, mode=args.mode)
    print(json.dumps({"images": len(c), "size": args.size, "file": str(c.file)}))
    return 0
