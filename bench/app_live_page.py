"""CPU of one redraw of the Pretrain page's job view, as the real server spends it, before and after issue 24.

A watched job is redrawn by a `run_every` fragment every second, in every browser session that watches it
(ui.jobs.watch), and the sidebar's job panel every two seconds. Two costs ran on every one of those reruns:

* `before`  the page built its plotly figures anew (loss, collapse monitor, the study's metrics), then
            Streamlit ran `gc.collect(2)` after the run (its `runner.postScriptGC`, on by default);
* `after`   the figures come from `ui.plots.live_figure` (built once per history content) and the app's
            `.streamlit/config.toml` turns the post-run collection off (Python's generational GC still runs).

The job is a real pretraining run (MoCo v2, resnet18, 64 px, `--steps` steps on phantom images) in a throwaway
workspace; the page is run through Streamlit's AppTest, which does not collect after a run, so `before` calls
`gc.collect(2)` itself exactly where Streamlit's ScriptRunner does. Variants alternate run by run; the median
process CPU (all threads) per rerun is printed, and its ratio.

    OMP_NUM_THREADS=1 .venv/bin/python bench/app_live_page.py [--steps 60] [--runs 15]
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60, help="pretraining steps of the watched job (its history)")
    ap.add_argument("--runs", type=int, default=15, help="reruns measured per variant")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-live-page-"))
    os.environ.update(SCARCE_CXR_WORKSPACE=str(tmp / "ws"), SCARCE_CXR_CHECKPOINTS=str(tmp / "ckpt"),
                      SCARCE_CXR_IMAGENET_DIR=str(tmp / "imagenet"), SCARCE_CXR_NO_AUTOPRETRAIN="1")
    from streamlit.testing.v1 import AppTest

    import ui.plots
    from engine.data.phantom import generate
    from engine.tasks import PretrainParams
    from ui.services import services

    csv = generate(tmp / "phantom", n=16, size=64, seed=0)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600).run()
    svc = services()
    svc.store.import_paths([str(p) for p in sorted((csv.parent).rglob("*.png"))])
    epochs = max(1, args.steps // 2)  # 16 images at batch 8: two steps an epoch
    job = svc.runner.submit("pretrain", PretrainParams(method="moco_v2", arch="resnet18", epochs=epochs, batch_size=8,
                                                       image_size=64, out_name="bench-live", preset="quick"))
    t0 = time.perf_counter()
    snap = svc.runner.wait(job, timeout=3600)
    assert snap.state == "done", (snap.state, snap.error)
    print(f"pretraining job: {len(snap.history)} history records in {time.perf_counter() - t0:.0f} s")
    at.switch_page("app_pages/pretrain.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.get("plotly_chart")) >= 2, "the job view shows no charts"

    def before() -> None:
        ui.plots._live.clear()  # every figure built anew, as before live_figure
        at.run()
        gc.collect(2)  # Streamlit's post-run collection (ScriptRunner._on_script_finished, postScriptGC=true)

    def after() -> None:
        at.run()

    cpu: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(args.runs):
        for name, fn in (("before", before), ("after", after)):
            c = time.process_time()
            fn()
            cpu[name].append(time.process_time() - c)
            assert not at.exception, [e.value for e in at.exception]
    g = time.process_time()
    gc.collect(2)
    print(f"gc.collect(2) alone: {1000 * (time.process_time() - g):.0f} ms with {len(gc.get_objects()):,} objects")
    med = {k: statistics.median(v) for k, v in cpu.items()}
    for k, v in med.items():
        print(f"{k:>7}: {1000 * v:6.0f} ms CPU per rerun (median of {args.runs}; min {1000 * min(cpu[k]):.0f})")
    print(f"ratio before/after: {med['before'] / med['after']:.1f}x less CPU per redraw")


if __name__ == "__main__":
    main()
