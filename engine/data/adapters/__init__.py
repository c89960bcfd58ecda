"""Dataset adapters: turn public datasets and plain folders into manifest CSVs.

Decisions (see docs/design.md, "Manifests"):

* Finding names are lowercased with surrounding whitespace removed and inner runs of whitespace
  collapsed (``"COPD signs"`` -> ``"copd signs"``, NIH ``"Pleural_Thickening"`` -> ``"pleural_thickening"``).
* "Normal" is the absence of findings, never a finding column: a ``normal`` class folder, NIH
  ``No Finding`` and PadChest ``normal`` all give 0 in every finding column.
* Labels absent from a report are negatives (0), as both datasets' papers use them.

Adapters that drop rows (missing image files, unlabeled rows) say how many through `on_event`
and the ``engine.data.adapters`` logger at WARNING level (which the CLI shows on stderr).

Layout of this package: ``common`` (finding names, reports, file listings), ``folder_tree``, ``nih``
and ``padchest`` (one adapter each). Import the public names from ``engine.data.adapters``.
"""
from __future__ import annotations

from engine.data.adapters.common import NORMAL_NAMES, SPLIT_NAMES, finding_name, findings_with_min_patients
from engine.data.adapters.folder_tree import from_folder_tree
from engine.data.adapters.nih import NIH_BOX_ALIASES, NIH_PNG_SIZE, NIH_SAMPLE_TABLES, NIH_TABLES, from_nih
from engine.data.adapters.padchest import (PADCHEST_DEFAULT_PROJECTIONS, PADCHEST_PROJECTIONS, from_padchest,
                                           padchest_labels)

__all__ = ["NIH_BOX_ALIASES", "NIH_PNG_SIZE", "NIH_SAMPLE_TABLES", "NIH_TABLES", "NORMAL_NAMES",
           "PADCHEST_DEFAULT_PROJECTIONS", "PADCHEST_PROJECTIONS", "SPLIT_NAMES", "finding_name",
           "findings_with_min_patients", "from_folder_tree", "from_nih", "from_padchest", "padchest_labels"]
