"""Store writes made by the pages: every error the store can raise (a full disk, a database locked by another
writer, a conflicting edit, a name or value it refuses, a missing file or permission) is shown as a message
with st.error, never as a traceback. Messages are escaped (engine.escaping.escape_markdown): they quote names
and paths the user chose."""
from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TypeVar

import streamlit as st

from engine.diskspace import DiskFullError as AnyDiskFull
from engine.diskspace import is_disk_full
from engine.escaping import escape_markdown
from engine.store import StoreError

__all__ = ["WRITE_ERRORS", "shown_error", "store_write", "write_error_message"]

T = TypeVar("T")
# What a store write can raise that the user can act on (anything else is a bug and stays a traceback).
WRITE_ERRORS = (StoreError, AnyDiskFull, sqlite3.Error, OSError, ValueError, KeyError)


def write_error_message(what: str, e: BaseException) -> str:
    """The plain-text message for a failed write: "Could not <what>: <the store's reason>", ending with
    what was left unchanged (every store write is one transaction, rolled back on any error)."""
    if isinstance(e, sqlite3.Error):
        msg = (f"the workspace database refused the change ({e}); if another program or app has the "
               "workspace open for writing, wait for it to finish and try again")
    elif isinstance(e, KeyError):
        msg = str(e.args[0]) if e.args else "it no longer exists (another session may have changed it); reload"
    elif isinstance(e, OSError) and not isinstance(e, (StoreError, AnyDiskFull)):
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        fix = ("disk full: free space on that disk (delete old runs, results or caches) and retry" if is_disk_full(e)
               else "check that the workspace folder exists and is writable")
        msg = f"{e.strerror or e}{where}; {fix}"
    else:
        msg = str(e)
    if "nothing" not in msg.lower():
        msg += "; nothing was changed"
    return f"Could not {what}: {msg}."


def store_write(action: Callable[[], T], what: str, icon: str = ":material/error:",
                passthrough: tuple[type[BaseException], ...] = ()) -> tuple[bool, T | None]:
    """Run `action` (a store write); on a store error show `write_error_message(what, e)` with st.error and
    return (False, None), else (True, its result). Errors of the types in `passthrough` are re-raised for
    the caller to handle (e.g. LabelConflictError, which reloads the editor)."""
    try:
        return True, action()
    except passthrough:
        raise
    except WRITE_ERRORS as e:
        icon = ":material/hard_drive:" if isinstance(e, AnyDiskFull) else icon
        st.error(escape_markdown(write_error_message(what, e)), icon=icon)
        return False, None


def shown_error(e: BaseException | str, icon: str = ":material/error:") -> None:
    """st.error of a message that may quote user text (escaped)."""
    st.error(escape_markdown(str(e)), icon=icon)
