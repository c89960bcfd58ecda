"""CLI: `inits` (list the registry), `fetch-imagenet` (download weights for offline use) and
`import-backbone` (a backbone trained elsewhere -> this project's checkpoint format)."""
from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("inits", help="list initializations, one JSON object per line: shipped backbones (best first), "
                                      "random, imagenet, your checkpoints")
    p.add_argument("--arch", default=None, help="arch for random/imagenet (default resnet18)")
    p.set_defaults(func=_inits)
    p = sub.add_parser("fetch-imagenet", help="download torchvision ImageNet weights for offline use")
    p.add_argument("--arch", default="resnet18")
    p.set_defaults(func=_fetch)
    p = sub.add_parser("import-backbone", help="import a backbone trained elsewhere (torchvision/timm, MoCo v2/v3, "
                                               "DINO, BarlowTwins, lightly, torchxrayvision) as a checkpoint")
    p.add_argument("file", help=".safetensors or .pth/.pt (read with torch.load(weights_only=True))")
    p.add_argument("--arch", required=True, choices=["resnet18", "resnet50", "densenet121"])
    p.add_argument("--name", required=True, help="checkpoint name (a new one)")
    p.add_argument("--source", default="", help="where the weights come from (paper, URL), recorded in the json")
    p.add_argument("--licence", default="", help="the weights' licence text, recorded in the json")
    p.add_argument("--mean", type=float, nargs="+", default=None,
                   help="input mean the network was trained with, 1 or 3 numbers (default ImageNet's)")
    p.add_argument("--std", type=float, nargs="+", default=None,
                   help="input std, 1 or 3 numbers (default ImageNet's; torchxrayvision: --mean 0.5 "
                        "--std 0.00048828125)")
    p.set_defaults(func=_import)


def _inits(args) -> int:
    from engine.models import list_inits

    for i in list_inits(arch=args.arch):
        row = {"name": i.name, "arch": i.arch, "method": i.method, "available": i.available, "reason": i.reason,
               "shipped": i.shipped, "kind": i.kind, "provenance": i.provenance}
        if i.image_size:  # the input contract: the size it was trained at (random has none)
            row["image_size"] = i.image_size
        print(json.dumps(row))
    return 0


def _fetch(args) -> int:
    from engine.models.registry import fetch_imagenet

    print(fetch_imagenet(args.arch))
    return 0


def _import(args) -> int:
    from engine.models.importing import import_backbone

    r = import_backbone(args.file, args.arch, args.name, source=args.source, licence=args.licence,
                        mean=args.mean, std=args.std)
    print(json.dumps({"name": r.name, "arch": r.arch, "layout": r.layout, "sha256": r.sha256, "stem": r.stem,
                      "n_dropped": r.n_dropped, "dropped": r.dropped, "path": str(r.path)}))
    return 0
