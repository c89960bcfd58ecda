"""ui.plots.live_figure: a watched job's charts are built once per content of the records they draw (issue 24)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import ui.plots
from ui.plots import LIVE_FIGURES_KEPT, collapse_figure, live_figure, loss_figure

LOSS, COLL = ("loss",), ("collapse_",)


def history(n: int) -> list[dict]:
    """n steps of loss; a collapse-monitor reading every 5th step (as a pretraining job records them)."""
    return [{"step": s, "loss": 5.0 - 0.01 * s, **({"collapse_std": 0.5, "collapse_cos": 0.2, "collapse_erank": 9.0}
                                                  if s % 5 == 0 else {})} for s in range(1, n + 1)]


def json_of(fig) -> str:
    return fig.to_json()


def test_same_records_reuse_the_figure_and_any_change_builds_anew():
    ui.plots._live.clear()
    h = history(20)
    first = live_figure(loss_figure, h, uses=LOSS)
    assert json_of(first) == json_of(loss_figure(h))  # the same figure as built from the whole history
    assert live_figure(loss_figure, [dict(r) for r in h], uses=LOSS) is first  # equal content, other objects
    assert live_figure(loss_figure, history(21), uses=LOSS) is not first  # a new step
    changed = history(20)
    changed[3]["loss"] = 9.0  # an earlier record differs: not only the length is the key
    assert list(live_figure(loss_figure, changed, uses=LOSS).data[0].y)[3] == 9.0
    # the collapse chart is rebuilt only when a monitor reading arrives, not with each loss step
    coll = live_figure(collapse_figure, history(20), 0.1, 2.0, uses=COLL)
    assert json_of(coll) == json_of(collapse_figure(history(20), 0.1, 2.0))
    assert live_figure(collapse_figure, history(24), 0.1, 2.0, uses=COLL) is coll
    assert live_figure(collapse_figure, history(25), 0.1, 2.0, uses=COLL) is not coll
    assert live_figure(collapse_figure, history(20), 0.2, 2.0, uses=COLL) is not coll  # the arguments are keys too


def test_keeps_only_the_most_recently_used_figures_and_is_thread_safe():
    ui.plots._live.clear()
    kept = live_figure(loss_figure, history(1), uses=LOSS)
    for n in range(2, LIVE_FIGURES_KEPT + 10):
        live_figure(loss_figure, history(n), uses=LOSS)
        live_figure(loss_figure, history(1), uses=LOSS)  # used again: stays
    assert len(ui.plots._live) == LIVE_FIGURES_KEPT
    assert live_figure(loss_figure, history(1), uses=LOSS) is kept

    def hammer(offset: int) -> int:
        figures = (live_figure(loss_figure, history(n % 12 + 1), uses=LOSS) for n in range(offset, offset + 30))
        return sum(len(f.data) for f in figures)

    with ThreadPoolExecutor(4) as pool:  # map re-raises a thread's exception here
        assert list(pool.map(hammer, range(4))) == [60] * 4
    assert len(ui.plots._live) <= LIVE_FIGURES_KEPT
