"""Typed job parameters: one frozen dataclass per job kind, validated once when built.

    @dataclass(frozen=True, kw_only=True)
    class SquaresParams(JobParams):
        n: int
        tag: str | None = None

        def validate(self) -> None:
            if self.n < 0:
                raise ValueError("n must be >= 0")

    p = SquaresParams(n=3)                      # validated once, here
    p = SquaresParams.from_json({"n": "3"})     # the same: values converted to the field types
    p.to_json()                                 # {"n": 3}: what the store keeps (None fields left out)

The stored format stays a JSON object, so job rows written before the params were typed load and
resume unchanged (`from_json(..., strict=False)` ignores keys a kind no longer knows). Conversion
follows the field annotations: int, float, str, bool, `X | None`, `tuple[X, ...]`, `tuple[X, Y]`,
`list[str]`; None (or a missing key) means the field's default. Anything that cannot be converted,
an unknown key (strict) or a failed `validate()` raises ValueError naming the kind and the field.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

__all__ = ["JobParams"]

P = TypeVar("P", bound="JobParams")


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobParams:
    """Base of the job kinds' parameter classes. `title` (optional) is shown in job lists.

    Construction converts each value to its field's annotated type (lists become tuples, "3" becomes
    3), then runs `validate()`; both raise ValueError naming the kind and the field."""

    kind: ClassVar[str] = "job"
    title: str | None = None

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                if not _optional(hints[f.name]):
                    raise ValueError(f"{self.kind} job parameter {f.name} needs a value")
                continue
            try:
                converted = _convert(value, hints[f.name])
            except (TypeError, ValueError) as e:
                raise ValueError(f"{self.kind} job parameter {f.name}={value!r}: {e}") from None
            object.__setattr__(self, f.name, converted)  # frozen: set once, while constructing
        self.validate()

    def validate(self) -> None:
        """Check values beyond their types; raise ValueError (or a subclass) with the reason."""

    # ------------------------------------------------------------------------------------ JSON

    def to_json(self) -> dict[str, Any]:
        """The params as a JSON object (tuples as lists; fields that are None left out)."""
        out = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_json(cls: type[P], data: Mapping[str, Any] | P | None, *, strict: bool = True) -> P:
        """Build (and validate) from a JSON object, e.g. a stored job row's params; an instance is
        returned as it is. A None value or a missing key means the field's default.

        strict: unknown keys raise ValueError (False: ignored, for rows stored by older versions).
        Raises ValueError for a missing required field, a value that does not fit its field, or a
        failed `validate`."""
        if isinstance(data, cls):
            return data
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.kind} job params must be a JSON object, not {type(data).__name__}")
        fields = dataclasses.fields(cls)
        names = [f.name for f in fields]
        unknown = sorted(set(data) - set(names))
        if unknown and strict:
            raise ValueError(f"unknown {cls.kind} job parameter(s) {', '.join(unknown)}; known: {', '.join(names)}")
        kw = {k: data[k] for k in names if data.get(k) is not None}
        missing = [f.name for f in fields if f.name not in kw
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ValueError(f"a {cls.kind} job needs the parameter(s) {', '.join(missing)}")
        return cls(**kw)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _optional(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _convert(value: Any, hint: Any) -> Any:
    """`value` as the annotated type (see the module docstring for the supported annotations)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"unsupported annotation {hint}")
        return _convert(value, inner[0])
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list, got {type(value).__name__}")
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            out = [_convert(v, args[0]) for v in value]
        else:
            if len(value) != len(args):
                raise ValueError(f"expected {len(args)} values, got {len(value)}")
            out = [_convert(v, a) for v, a in zip(value, args)]
        return tuple(out) if origin is tuple else out
    if hint is bool:
        return bool(value)
    if hint in (int, float):
        if isinstance(value, (list, tuple, dict)):
            raise ValueError(f"expected a number, got {type(value).__name__}")
        return hint(value)
    if hint is str:
        if isinstance(value, (list, tuple, dict)):
            raise ValueError(f"expected a string, got {type(value).__name__}")
        return str(value)
    if hint is Any:
        json.dumps(value)
        return value
    raise TypeError(f"unsupported annotation {hint}")
