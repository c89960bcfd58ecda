"""The one validator for user-supplied names, and the check that a write path stays inside its root.

Every name a user (or a file a user supplies) can choose passes `check_name` before it is stored,
used in a file name or handed to the registry:

    check_name("pleural effusion", "finding")        # findings: letters, digits, spaces, . - _ + ( ) & ...
    check_name("moco_v2-resnet18-nih", "checkpoint")  # backbones: [A-Za-z0-9][A-Za-z0-9._-]*, not random/imagenet
    check_name("random-resnet50", "init")             # an init name read from a saved classifier
    check_name("mass-random-probe-20250101", "classifier")

Shared rules (every kind): a string of 1-64 characters after stripping surrounding spaces; the first
character a letter or digit (so never `.`, `..`, `-x` or a hidden file); no path separators
(`/`, `\\`), no `:`, no wildcard or shell-redirect characters (`* ? < > |`), no commas or quotes
(names are CSV columns and CLI list items), no control or other non-printable characters, and no
trailing dot or space. Checkpoint and init names are stricter (ASCII letters, digits, `.`, `-`, `_`:
they are file names in a shared checkpoints folder and timm-style identifiers).

`inside(root, *parts)` joins and resolves a path and raises `UnsafePathError` unless the result lies
inside `root` (symlinks resolved), so a name that slipped through elsewhere can still never make a
write land outside the workspace or checkpoints folder.
"""
from __future__ import annotations

import re
from pathlib import Path

__all__ = ["InvalidNameError", "KINDS", "MAX_NAME", "UnsafePathError", "check_name", "inside"]

MAX_NAME = 64
KINDS = ("finding", "classifier", "checkpoint", "init")
_FORBIDDEN = set('/\\:*?<>|,"\'`')
_IDENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_BUILTIN_INITS = frozenset({"random", "imagenet"})
# Column names a finding may not take (columns of Store.images() and of exported manifests).
RESERVED_FINDINGS = frozenset({
    "id", "sha256", "name", "file", "width", "height", "bits", "source_format", "photometric",
    "modality", "view", "patient_key", "split", "created", "path", "patient_id",
})
_WHAT = {"finding": "finding", "classifier": "classifier", "checkpoint": "backbone (checkpoint)",
         "init": "init"}


class InvalidNameError(ValueError):
    """A user-supplied name that is not allowed; the message says what is wrong and how to fix it."""


class UnsafePathError(ValueError):
    """A write path that would land outside the folder it must stay in."""


def check_name(name: object, kind: str) -> str:
    """Return the stripped `name` if it is a valid name of `kind` (finding, classifier, checkpoint, init).

    Raises `InvalidNameError` (a ValueError) naming the problem: empty, longer than 64 characters,
    starting with something other than a letter or digit, containing path separators, `:`, wildcards,
    commas, quotes or control characters, ending in a dot or space, a reserved column name (findings),
    `random` / `imagenet` (checkpoints), or for checkpoint and init names anything outside ASCII letters,
    digits, `.`, `-` and `_`. Raises ValueError for an unknown `kind`.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown name kind {kind!r}; use one of {', '.join(KINDS)}")
    what = _WHAT[kind]
    if not isinstance(name, str):
        raise InvalidNameError(f"a {what} name must be text, got {type(name).__name__}")
    n = name.strip()
    if not n:
        raise InvalidNameError(f"a {what} needs a non-empty name")
    shown = repr(n if len(n) <= 40 else n[:40] + "...")
    if len(n) > MAX_NAME:
        raise InvalidNameError(f"{what} name {shown} is longer than {MAX_NAME} characters; use a shorter name")
    bad = sorted({c for c in n if c in _FORBIDDEN or not c.isprintable()})
    if bad:
        shown_bad = " ".join(repr(c) for c in bad[:8])
        raise InvalidNameError(f"{what} name {shown} contains {shown_bad}: path separators, ':', wildcards, commas, "
                               "quotes and control characters are not allowed; use letters, digits, spaces, "
                               "'-', '_' and '.'")
    if not n[0].isalnum():
        raise InvalidNameError(f"{what} name {shown} must start with a letter or digit")
    if n.endswith("."):
        raise InvalidNameError(f"{what} name {shown} must not end with a dot")
    if kind == "finding" and n.lower() in RESERVED_FINDINGS:
        raise InvalidNameError(f"{n!r} is a reserved column name; pick another name for the finding")
    if kind in ("checkpoint", "init"):
        if not _IDENT.fullmatch(n):
            raise InvalidNameError(f"invalid {what} name {shown}: use ASCII letters, digits, '.', '-' and '_' "
                                   "(no spaces), starting with a letter or digit")
        if kind == "checkpoint" and n in _BUILTIN_INITS:
            raise InvalidNameError(f"invalid {what} name {shown}: 'random' and 'imagenet' are built-in inits; "
                                   "pick another name")
    return n


def inside(root: str | Path, *parts: str | Path) -> Path:
    """`root / parts...`, resolved (symlinks followed), checked to lie inside `root` (also resolved).

    Raises `UnsafePathError` when the result escapes `root` (e.g. a part with `..`, an absolute part,
    or a symlink pointing elsewhere). The path need not exist.
    """
    base = Path(root).expanduser().resolve()
    target = base.joinpath(*[Path(p) for p in parts]).resolve()
    if target != base and base not in target.parents:
        raise UnsafePathError(f"refusing to write {target}: it is outside {base}; use a plain name without "
                              "'..', '/' or links that lead elsewhere")
    return target
