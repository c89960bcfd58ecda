"""Typed job params (issue 15 item 2): one frozen dataclass per kind, validated once, stored as JSON;
rows stored before the params were typed (plain dicts, extra or null keys) still load and resume."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import pytest

from engine.jobs import JobContext, JobParams, JobRunner
from engine.store import Store
from engine.tasks import KINDS, ClassifyParams, ImportParams, PretrainParams, SimilarityParams, SweepParams


@dataclass(frozen=True, kw_only=True)
class CountParams(JobParams):
    kind = "count"
    n: int
    shots: tuple[int, ...] = (1, 5)

    def validate(self) -> None:
        if self.n < 0:
            raise ValueError("n must be at least 0")


SEEN: list = []


def count(params: CountParams, ctx: JobContext) -> dict:
    SEEN.append(params)
    return {"n": params.n, "shots": list(params.shots)}


@pytest.fixture
def runner(tmp_path):
    store = Store(tmp_path / "ws")
    r = JobRunner(store, device="cpu")
    r.register("count", count, uses_gpu=False, params_type=CountParams)
    yield r
    r.shutdown()
    store.close()


def test_every_app_kind_has_one_frozen_params_class_named_after_it():
    """(That every kind runs and records its result: tests/jobs/test_job_kinds.py.)"""
    assert len({k.name for k in KINDS}) == len(KINDS)
    for k in KINDS:
        assert dataclasses.is_dataclass(k.params_type) and k.params_type.__dataclass_params__.frozen


def test_params_are_converted_validated_and_round_trip_through_json():
    p = SweepParams(findings=["nodule"], inits=["random"], shots=[1, "2"])
    assert p.findings == ("nodule",) and p.shots == (1, 2) and p.trials == 10 and p.modes == ("probe",)
    assert SweepParams.from_json(json.loads(json.dumps(p.to_json()))) == p
    assert "title" not in p.to_json() and p.to_json()["shots"] == [1, 2]
    with pytest.raises(ValueError, match=r"sweep job parameter trials='many'"):
        SweepParams(findings=["nodule"], inits=["random"], trials="many")
    with pytest.raises(ValueError, match=r"unknown classify job parameter\(s\) fnding"):
        ClassifyParams.from_json({"fnding": "nodule"})
    with pytest.raises(ValueError, match=r"a classify job needs the parameter\(s\) finding"):
        ClassifyParams.from_json({"init": "random"})
    with pytest.raises(ValueError, match="unknown import source 'ftp'"):
        ImportParams(source="ftp", path="/x")
    with pytest.raises(ValueError, match="at least one candidate"):
        SimilarityParams(init="random")
    with pytest.raises(ValueError, match="epochs must be at least 1"):
        PretrainParams(method="moco_v2", out_name="x", epochs=0)
    assert ImportParams.from_json({"source": "upload", "path": "/p", "label": ["nodule", "1"]}).label == ("nodule", 1)


def test_submit_validates_once_stores_json_and_hands_the_function_an_instance(runner):
    SEEN.clear()
    with pytest.raises(ValueError, match="n must be at least 0"):
        runner.submit("count", {"n": -1})
    with pytest.raises(ValueError, match=r"unknown count job parameter\(s\) m"):
        runner.submit("count", {"n": 1, "m": 2})
    assert runner.store.jobs() == []  # refused jobs leave no row
    jid = runner.submit("count", CountParams(n=3, shots=(2,)))
    assert runner.wait(jid, 30).result == {"n": 3, "shots": [2]}
    assert runner.store.job(jid)["params"] == {"n": 3, "shots": [2]}
    assert SEEN == [CountParams(n=3, shots=(2,))]


def test_a_row_stored_as_a_plain_dict_with_old_keys_still_resumes(runner):
    SEEN.clear()
    store = runner.store
    jid = store.create_job("count", {"n": "4", "shots": None, "retired_option": True}, owner="dead", state="running")
    other = JobRunner(store, device="cpu")  # marks the dead owner's job interrupted
    other.shutdown()
    assert store.job(jid)["state"] == "interrupted"
    runner.resume(jid)
    snap = runner.wait(jid, 30)
    assert snap.state == "done" and snap.result == {"n": 4, "shots": [1, 5]}
    assert snap.params == {"n": "4", "shots": None, "retired_option": True}  # the stored row is left as it was
