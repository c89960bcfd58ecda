"""The one resume-compatibility rule: a run's settings are its key (as nanoGPT's checkpoint keeps its
config). A run resumes only when the settings stored with it equal the new ones, field by field;
otherwise it is refused with every differing field named `field: old -> new`.

    check_same_settings(stored, cfg.to_dict(), what=f"the sweep in {out}", fix="use another folder",
                        only=PROTOCOL_FIELDS)

Callers (each stores its settings as a JSON-able dict beside its state):
- SSL pretraining: `state.pt`'s config (engine.ssl.checkpointing.check_resumable; `ignore` = RESUME_FREE,
  settings that do not change the result);
- few-shot sweeps: `<out>/config.json` (engine.fewshot.sweep; `only` = PROTOCOL_FIELDS, the fields that
  change a trial's result: findings, inits, shots and trials may grow);
- the study: `<out>/study.json` (engine.study.runner; every field);
- the study's pretraining and sweep stages resume through the first two.

Torch-free and stdlib only.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["SettingsChangedError", "check_same_settings", "settings_changes"]


class SettingsChangedError(ValueError):
    """A run was asked to resume with settings other than the ones it was started with. `changes` lists
    the differing fields as `field: old -> new`."""

    def __init__(self, message: str, changes: list[str]):
        super().__init__(message)
        self.changes = changes


def settings_changes(old: Mapping[str, Any], new: Mapping[str, Any], *, only: Iterable[str] | None = None,
                     ignore: Iterable[str] = ()) -> list[str]:
    """Every field whose value differs between the stored settings `old` and the new `new`, as
    `field: old -> new` (values as repr; a field missing on one side shows None there).

    `only`: compare just these fields (in this order); else every field of either dict (new's order,
    then fields only the old settings had). `ignore`: fields never compared."""
    skip = set(ignore)
    keys = list(only) if only is not None else list(dict.fromkeys([*new, *old]))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if k not in skip and old.get(k) != new.get(k)]


def check_same_settings(old: Mapping[str, Any], new: Mapping[str, Any], *, what: str, fix: str,
                        only: Iterable[str] | None = None, ignore: Iterable[str] = (),
                        error: type[ValueError] = SettingsChangedError) -> None:
    """Raise `error` (default SettingsChangedError, a ValueError) when `old` and `new` differ (see
    `settings_changes`), with the message "cannot resume <what>: it was written with different settings
    (<field: old -> new>; ...). <fix>". Returns None when they agree."""
    changes = settings_changes(old, new, only=only, ignore=ignore)
    if not changes:
        return
    message = f"cannot resume {what}: it was written with different settings ({'; '.join(changes)}). {fix}"
    if issubclass(error, SettingsChangedError):
        raise error(message, changes)
    exc = error(message)
    exc.changes = changes  # type: ignore[attr-defined]
    raise exc
