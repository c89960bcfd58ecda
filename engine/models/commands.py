"""CLI: `inits` (list the registry) and `fetch-imagenet` (download weights for offline use)."""
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
