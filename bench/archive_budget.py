"""Issue 22's archive cases, measured: what a ZIP upload costs inside the page request now.

1. A small ZIP of 10,000 tiny PNGs: the Data page's budget (Store.budget_upload, headers only) and its
   decision; before issue 22 it counted 1 file and decoded all 10,000 in the request (~2 min, no progress).
2. A ZIP holding one (or eight) members of 500 MiB of zeros behind a PNG signature (a ZIP bomb): the
   budget plus the in-request import (Store.import_bytes), wall time and peak memory of a fresh process;
   before issue 22 one member cost 1.2 GB and 7.5 s, eight 1.7 GB and 34 s (the issue's figures).

    OMP_NUM_THREADS=1 .venv/bin/python bench/archive_budget.py      # ~1 min on 2 cores
"""
from __future__ import annotations

import io
import json
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from engine.store import Store
data = Path(sys.argv[1]).read_bytes()
store = Store(sys.argv[2])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
budget = store.budget_upload([("a.zip", data)])
background = store.upload_in_background(budget.images, budget.pixels)
t_budget = time.perf_counter() - t
results = [] if background else store.import_bytes("a.zip", data)
t_all = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"images": budget.images, "background": background, "budget_s": t_budget, "request_s": t_all,
                  "extra_peak_mib": (peak - base) / 1024, "errors": [r.error for r in results if r.error][:1]}))
"""


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _measure(tmp: Path, label: str, data: bytes) -> None:
    f = tmp / f"{label}.zip"
    f.write_bytes(data)
    out = subprocess.run([sys.executable, "-c", CHILD, str(f), str(tmp / f"ws-{label}")], capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parents[1], check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    where = "background job (progress, cancel)" if r["background"] else "page request"
    print(f"{label:28} {len(data) / 2**20:7.1f} MiB zip  images {r['images']:>6}  -> {where:34} "
          f"budget {r['budget_s']:5.2f} s  in request {r['request_s']:5.2f} s  peak +{r['extra_peak_mib']:6.0f} MiB"
          + (f"\n{'':28} {r['errors'][0][:150]}" if r["errors"] else ""))


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        many = _zip({f"im{i:05d}.png": _png(i) for i in range(10_000)})
        _measure(tmp, "10,000 tiny PNGs", many)
        bomb = _png(0)[:33] + bytes(500 * 2**20)
        t = time.perf_counter()
        one = _zip({"bomb.png": bomb})
        print(f"(built the bomb in {time.perf_counter() - t:.1f} s)")
        _measure(tmp, "one 500 MiB bomb member", one)
        _measure(tmp, "eight 500 MiB bomb members", _zip({f"bomb{i}.png": bomb for i in range(8)}))
    print("before issue 22 (the issue's figures): 10,000 PNGs decoded in the request (~2 min); one bomb member "
          "1.2 GB / 7.5 s, eight 1.7 GB / 34 s")


if __name__ == "__main__":
    main()
