"""Reading the files a backbone comes from, so that one bad file never takes down a listing.

- `read_checkpoint_info(json_path)`: a checkpoint's json, checked to be the expected shape (an object
  with a known `arch`, strings where strings belong, numbers where numbers belong). Raises
  `CheckpointInfoError` naming the file, the problem and what to do; `engine.models.registry` lists
  such a checkpoint as unavailable with that reason instead of failing the whole listing.
- `weights_file_problem(path)`: a cheap check (no unpickling, no full read) that a torch weights
  file is one at all: the zip container of `torch.save` with its central directory (an interrupted
  download lacks it), or the legacy format's magic number. Used to list ImageNet weights as
  available only when they can be loaded.
- `torch_load_weights(path, fix)`: `torch.load(weights_only=True)`, whose failures (a pickle of
  other objects, a truncated file, garbage) become `NotAWeightsFileError` saying "not a valid
  weights file" and `fix` (re-fetch / delete it), never torch's advice to unpickle the file.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Final

from engine.models.backbones import ARCHS

__all__ = ["CheckpointInfoError", "NotAWeightsFileError", "read_checkpoint_info", "torch_load_weights",
           "weights_file_problem"]

# Fields a checkpoint json may hold and the type each must have when present (engine.ssl.checkpointing
# .backbone_info writes them; pages and `python -m engine inits` read them).
_STRINGS: Final = ("name", "arch", "method", "created", "provenance", "init", "run_dir", "device", "sha256",
                   "data_fingerprint", "param_hash", "torch")
_NUMBERS: Final = ("rank", "steps", "total_steps", "epochs", "images_seen", "n_images", "image_size",
                   "world_size", "train_seconds")
_OBJECTS: Final = ("config", "collapse", "loss", "collapse_control")
# The legacy (pre-1.6) torch.save format starts with the pickled magic number 0x1950a86a20f9469cfc6c.
_LEGACY_MAGIC: Final = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


class CheckpointInfoError(ValueError):
    """A checkpoint json that cannot be read or is not the expected shape; the message names the file,
    the problem and what to do."""


class NotAWeightsFileError(ValueError):
    """A weights file torch cannot load as tensors (a pickle, a truncated download, garbage); the
    message names the file and what to do."""


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false"}.get(
        type(v), "null" if v is None else "a number" if isinstance(v, (int, float)) else type(v).__name__)


def _shape_problem(info: Any) -> str | None:
    """What is wrong with a parsed checkpoint json, or None."""
    if not isinstance(info, dict):
        return f"the file holds {_kind(info)}, not an object with the checkpoint's fields"
    if "arch" not in info:
        return f"it has no `arch` (the network it holds: one of {', '.join(ARCHS)})"
    for k in _STRINGS:
        if k in info and not isinstance(info[k], str):
            return f"`{k}` is {_kind(info[k])} ({info[k]!r:.40}), not a string"
    if info["arch"] not in ARCHS:
        return f"`arch` {info['arch']!r:.40} is not one of {', '.join(ARCHS)}"
    for k in _NUMBERS:
        if k in info and info[k] is not None and (isinstance(info[k], bool) or not isinstance(info[k], (int, float))):
            return f"`{k}` is {_kind(info[k])} ({info[k]!r:.40}), not a number"
    for k in _OBJECTS:
        if k in info and info[k] is not None and not isinstance(info[k], dict):
            return f"`{k}` is {_kind(info[k])}, not an object"
    for k in ("mean", "std"):
        v = info.get(k)
        if v is not None and not (isinstance(v, list) and len(v) in (1, 3)
                                  and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
            return f"`{k}` is {v!r:.40}, not a list of 1 or 3 numbers"
    return None


def read_checkpoint_info(path: Path) -> dict[str, Any]:
    """The checkpoint json at `path`, checked: a JSON object with a known `arch` (engine.models.ARCHS)
    and the known fields of the right types (strings, numbers, objects, `mean`/`std` lists of 1 or 3
    numbers). Raises CheckpointInfoError naming `path`, the problem and what to do."""
    fix = (f"Re-export the checkpoint from its training run, fix the json by hand, or delete {path.name} and "
           f"{path.with_suffix('.safetensors').name} from {path.parent}")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        why = f"{type(e).__name__}: {e}" if not isinstance(e, OSError) else (e.strerror or str(e))
        raise CheckpointInfoError(f"{path} cannot be read as a checkpoint description ({why}). {fix}") from e
    problem = _shape_problem(info)
    if problem:
        raise CheckpointInfoError(f"{path} is not a valid checkpoint description: {problem}. {fix}")
    return info


def weights_file_problem(path: Path) -> str | None:
    """Why `path` is not a torch weights file (without unpickling or reading it whole), or None: it
    must be the zip container `torch.save` writes, complete (its central directory at the end: an
    interrupted download has none), or start with the legacy format's magic number."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_LEGACY_MAGIC))
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if head.startswith(b"PK\x03\x04"):
        try:
            ok = zipfile.is_zipfile(path)
        except OSError:
            ok = False
        return None if ok else "its zip container has no end (an interrupted download or a truncated copy)"
    if head == _LEGACY_MAGIC:
        return None
    if not head:
        return "it is empty (0 bytes)"
    return ("it is a Python pickle, not a torch weights file" if head[:1] == b"\x80"
            else "it is neither torch's zip container nor its legacy format")


def torch_load_weights(path: Path, fix: str, map_location: Any = "cpu") -> Any:
    """`torch.load(path, weights_only=True)` (tensors and plain containers only, never other objects).
    Raises NotAWeightsFileError "<path> is not a valid weights file (<why>): <fix>" when the file is
    no such thing (a pickle of other objects, a truncated download, garbage), never torch's advice to
    load it with weights_only=False."""
    import torch

    problem = weights_file_problem(path)
    if problem is None:
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # UnpicklingError, RuntimeError (zip reader), EOFError, ...
            msg = str(e)
            problem = ("it holds Python objects other than tensors, which are never unpickled"
                       if "Weights only load failed" in msg or "weights_only" in msg
                       else f"{type(e).__name__}: {msg.splitlines()[0][:160] if msg else 'unreadable'}")
    raise NotAWeightsFileError(f"{path} is not a valid weights file ({problem}): {fix}")
