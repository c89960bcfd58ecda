"""A sweep's inits: known names (`check_inits`) and the size each runs at (`init_sizes`, `CacheBySize`).

timm keeps the input size with the model's name; here it is the registry's (`InitInfo.image_size`,
answered per device by `engine.models.input_size_for`). A sweep given no size runs each init at its own;
one given a size (`--image-size`) honours it for every init and says which were trained at another size.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from engine.events import OnEvent, emit
from engine.models.backbones import ARCHS
from engine.models.registry import InitInfo, UnknownInitError, _split_builtin, input_size_for, list_inits


def check_inits(inits: tuple[str, ...], arch: str | None, checkpoint_dir: Path | None = None) -> None:
    """Fail before any work on a name the registry does not know (unavailable ones are fine here):
    UnknownInitError listing the valid names."""
    known = {i.name for i in list_inits(checkpoint_dir, arch=arch)}
    builtin = {f"{b}-{a}" for b in ("random", "imagenet") for a in ARCHS}
    for name in inits:
        if name not in known and name not in builtin:
            raise UnknownInitError(f"unknown init {name!r}; valid inits: {', '.join(sorted(known))}")


def init_sizes(inits: tuple[str, ...], image_size: int | None, device: torch.device | str, arch: str | None = None,
               checkpoint_dir: Path | None = None, warnings: list[str] | None = None,
               on_event: OnEvent | None = None, why: str = "the image size asked for") -> dict[str, dict[str, Any]]:
    """{init: {"image_size": pixels it runs at, "trained": its training size or None, "source": "init" |
    "explicit"}}. For each init an explicit `image_size` runs off its training size, a warning saying so
    (and `why` that size) is appended to `warnings` and emitted (kind "warning").

    Names unknown to the registry are given the explicit size (or the device's working size); `check_inits`
    refuses them first. Raises nothing."""
    known = {i.name: i for i in list_inits(checkpoint_dir, arch=arch)}
    out: dict[str, dict[str, Any]] = {}
    for name in inits:
        info, builtin = known.get(name), _split_builtin(name, arch)
        if info is None and builtin is not None:  # random-resnet50, imagenet-densenet121, ...
            info = InitInfo(name, builtin[1], builtin[0], True)
        trained = info.image_size if info is not None else None
        own = input_size_for(info if info is not None else "random", device)
        size = int(image_size) if image_size else own
        out[name] = {"image_size": size, "trained": trained, "source": "explicit" if image_size else "init"}
        if image_size and trained is not None and trained != size:
            msg = (f"init {name} was trained at {trained} px and runs at {size} px here ({why}): it is judged off "
                   "the size it learned" + ("; leave the size unset to run each init at its own"
                                            if why == "the image size asked for" else ""))
            if warnings is not None:
                warnings.append(msg)
            emit(on_event, message=msg, level="warning", kind="warning")
    return out


class CacheBySize:
    """The same images cached once per size some init runs at (engine.data.cache.ImageCache, built on first use)."""

    def __init__(self, paths: list[str], on_event: Any = None, stop: Any = None, cache_dir: Path | None = None) -> None:
        self.paths, self.on_event, self.stop, self.cache_dir = paths, on_event, stop, cache_dir
        self.built: dict[int, Any] = {}

    def at(self, size: int) -> Any:
        """The ImageCache of the images at `size` px (Cancelled when `stop` is set while building)."""
        from engine.data.cache import ImageCache
        from engine.events import as_log

        if size not in self.built:
            self.built[size] = ImageCache.build(self.paths, size, cache_dir=self.cache_dir, on_event=as_log(self.on_event),
                                                stop=self.stop)
        return self.built[size]


def shared_size(inits: tuple[str, ...] | list[str], device: torch.device | str, arch: str | None = None,
                checkpoint_dir: Path | None = None) -> int:
    """One size for a comparison that needs one (a Grad-CAM grid): the largest of the inits' own sizes, so none
    runs below the size it was trained at (those trained smaller are warned about by `init_sizes`)."""
    sizes = init_sizes(tuple(inits), None, device, arch, checkpoint_dir)
    return max((s["image_size"] for s in sizes.values()), default=input_size_for("random", device))
