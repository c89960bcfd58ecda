"""What a JobRunner cleans when it opens a workspace, besides marking orphaned jobs interrupted."""
from __future__ import annotations

import logging

from engine.store import OrphanReport, Store, StoreError

__all__ = ["remove_orphan_files"]

log = logging.getLogger("engine.jobs")  # the package's name: what operators filter on


def remove_orphan_files(store: Store) -> OrphanReport:
    """Store.remove_orphan_files (pixel files of imports killed before their rows committed), reported
    as one log line (logger `engine.jobs`); a busy database skips it until the next start."""
    try:
        report = store.remove_orphan_files()
    except StoreError as e:
        log.warning("orphan file cleanup skipped in %s: %s", store.workspace, e)
        return OrphanReport()
    if report.files:
        log.warning("%s: %s", store.workspace, report)
    else:
        log.info("%s: no orphan image files", store.workspace)
    return report
