"""Each job kind is described once, in its engine.tasks.TaskKind, and the app's job panels read it there."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from engine import tasks
from engine.jobs import JobSnapshot

ROOT = Path(tasks.__file__).resolve().parents[2]


def _snap(kind: str, state: str = "running", step: int = 3, total: int = 8) -> JobSnapshot:
    return JobSnapshot(id=1, kind=kind, params={"title": "x"}, state=state, step=step, total=total,
                       progress=step / total, eta_s=None, metrics={}, history=[], log=[], warnings=[], error=None,
                       result=None, created=0.0, updated=0.0)


@pytest.mark.parametrize("kind", tasks.KINDS, ids=lambda k: k.name)
def test_every_kind_says_what_it_is_where_it_is_shown_and_what_it_records(kind):
    assert tasks.kind_of(kind.name) is kind and kind.label and kind.unit and kind.gpu in ("always", "cuda", "never")
    page = ROOT / kind.page
    text = page.read_text()  # the page and the ui modules it draws sections with
    shown = text + "".join((ROOT / "ui" / f"{m}.py").read_text() for m in re.findall(r"from ui\.(\w+) import", text))
    assert f'"{kind.name}"' in shown, f"{kind.page} neither submits nor shows {kind.name} jobs"
    adapter = inspect.getsource(kind.fn)
    if kind.result_kind is None:
        assert "add_result(" not in adapter
    else:
        assert f'add_result("{kind.result_kind}"' in adapter


def test_study_and_similarity_adapters_live_with_the_other_kinds():
    assert {inspect.getmodule(k.fn).__name__.rsplit(".", 1)[0] for k in tasks.KINDS} == {"engine.tasks"}


def test_job_panels_read_the_kind_facts():
    from ui.jobs import job_title, kind_resumes, progress_text

    for k in tasks.KINDS:
        assert progress_text(_snap(k.name)).endswith(f"{k.unit} 3 of 8") and job_title(_snap(k.name)) == f"{k.label} x"
        assert kind_resumes(k.name) is k.resumes
    assert job_title(_snap("similarity")) == "Dataset similarity x"       # was missing from the UI's own tables
    assert progress_text(_snap("similarity")).endswith("image set 3 of 8")
    assert job_title(_snap("future_kind")) == "Future Kind x" and not kind_resumes("future_kind")
