"""Every job kind of the app (engine.tasks.KINDS) submits through a JobRunner, runs on a tiny workspace and
records its result: the job row ends `done` with a result, and what the kind makes (images, a checkpoint, a
results row) is in the workspace. A new kind fails here until it gets a tiny job below."""
from __future__ import annotations

import dataclasses

from pathlib import Path

import pytest

from engine.jobs import JobRunner
from engine.store import Store
from engine.tasks import (
    KINDS, ClassifyParams, GradcamImageParams, GradcamStudyParams, ImportParams, LabelAdviceParams, PretrainParams,
    ScoreImagesParams, SimilarityParams, StudyParams, SweepParams, register_all,
)

S = 32  # pixels: every kind at the smallest size a ResNet runs at


def _tiny_jobs(phantom: Path, image_id: int) -> dict[str, object]:
    """One tiny params instance per kind, in submission order (the study reuses the pretrained backbone)."""
    return {
        "import": ImportParams(source="manifest", path=str(phantom)),
        "pretrain": PretrainParams(method="moco_v2", out_name="kinds-moco", image_size=S, epochs=1, batch_size=8,
                                   preset="quick"),
        "classify": ClassifyParams(finding="nodule", init="random", image_size=S, cv_repeats=1, name="kinds-clf"),
        "sweep": SweepParams(findings=("nodule",), inits=("random",), shots=(2,), trials=1, image_size=S),
        "gradcam": GradcamStudyParams(finding="nodule", inits=("random",), shots=2, n_images=1, image_size=S),
        "gradcam_image": GradcamImageParams(finding="nodule", image_id=image_id, inits=("random",), image_size=S),
        "similarity": SimilarityParams(init="random", candidates=(f"phantom={phantom.parent}",), n_images=6,
                                       image_size=S, grid=1, layers=("layer4",)),
        "study": StudyParams(methods=("moco_v2",), reuse=("moco_v2=kinds-moco",), findings=("nodule",),
                             name="kinds", image_size=S, shots=(2,), trials=1, baselines=("random",),
                             gradcam_images=0),  # Grad-CAM runs as its own kind above (3 episodes x 3 sanity models)
        # the classifier made by "classify" above scores the workspace's images (and validates on their labels)
        "score_images": ScoreImagesParams(classifier="<classify's file>", image_ids=(-1,), finding="nodule"),
        "label_advice": LabelAdviceParams(finding="nodule", init="random", image_size=S, k=3, extra=4, repeats=2),
    }


def _recorded(kind: str, store: Store, result: dict) -> None:
    """What each kind leaves behind besides its job row."""
    if kind == "import":
        assert result["images"] == len(store.images()) == 24 and "nodule" in store.findings()
    elif kind == "pretrain":
        assert result["checkpoint"] == "kinds-moco" and Path(result["path"]).exists() and result["steps"] >= 1
        from engine.models import load_backbone

        assert load_backbone("kinds-moco")[1].method == "moco_v2"  # listed as an init
    elif kind == "gradcam_image":
        assert Path(result["original"]).exists() and [r["init"] for r in result["rows"]] == ["random"]
    else:  # a results row of the kind's own, pointing at what it wrote
        results = {"classify": "classifier", "score_images": "scores"}.get(kind, kind)
        (row,) = store.results(kind=results)
        assert row["id"] == result["result_id"] and Path(row["path"]).exists()


@pytest.fixture
def phantom(tmp_path) -> Path:
    from engine.data.phantom import generate

    return generate(tmp_path / "phantom", n=24, size=S, seed=5, findings=("nodule",), prevalence=0.5)


def test_every_job_kind_submits_runs_on_a_tiny_workspace_and_records_its_result(phantom, tmp_path):
    store = Store(tmp_path / "ws")
    runner = JobRunner(store, device="cpu")
    try:
        register_all(runner)
        jobs = _tiny_jobs(phantom, image_id=-1)
        assert {k.name for k in KINDS} == set(jobs), "give each job kind of engine.tasks.KINDS a tiny job here"
        for kind, params in jobs.items():
            if kind == "gradcam_image":  # a positive image of the imported workspace
                df = store.images()
                params = dataclasses.replace(params, image_id=int(df[df["nodule"] == 1]["id"].iloc[0]))
            if kind == "score_images":  # the classify job's file, every workspace image
                (clf,) = store.results(kind="classifier")
                params = dataclasses.replace(params, classifier=str(clf["path"]),
                                             image_ids=tuple(int(i) for i in store.images()["id"]))
            jid = runner.submit(kind, params)
            snap = runner.wait(jid, timeout=600)
            assert snap.state == "done", (kind, snap.state, snap.error)
            row = store.job(jid)
            assert row["kind"] == kind and row["state"] == "done" and row["result"] == snap.result, kind
            _recorded(kind, store, snap.result)
    finally:
        runner.shutdown()
        store.close()
