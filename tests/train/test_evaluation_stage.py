"""spec.evaluation: after training, rank 0 generates the test set with the stored final weights, scores
it (tiny random metric models here) and the numbers land in OUTPUT/eval/report.json and progress.json;
a broken evaluation is reported there without failing the training."""

from __future__ import annotations

import json

import pytest

from polyvivid.api.training import TrainingSpec
from polyvivid.cli import main as cli
from polyvivid.storage import open_store

from .conftest import polyvivid, progress, training_manifest, write_spec


@pytest.fixture(scope="module")
def cases_file(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("eval-set")
    assert cli(["eval-cases", "--drawn", "--out", str(root / "cases.jsonl"), "--count", "4"]) == 0
    return str(root / "cases.jsonl")


def test_training_ends_with_an_evaluation_in_progress_json(synth_dataset, cases_file, tmp_path):
    output = str(tmp_path / "run")
    evaluation = {"cases": cases_file, "maxCases": 2, "metrics": ["clip-b", "clip-l", "temporal", "face"],
                  "models": {"preset": "tiny"}, "numFrames": 5, "height": 32, "width": 32, "steps": 2}
    manifest = training_manifest(synth_dataset, output, steps=(1, 1), evaluation=evaluation)
    result = polyvivid("train", str(write_spec(tmp_path / "spec.yaml", manifest)))
    assert result.returncode == 0, result.stderr[-2000:]
    state = progress(output)
    assert state["status"] == "succeeded" and state["final"].endswith("final")
    ev = state["evaluation"]
    assert "error" not in ev, ev
    assert set(ev["metrics"]) == {"clip_b", "clip_l", "temporal_consistency", "face_sim"}
    assert (ev["videos"], ev["cases"]) == (2, 2)
    store = open_store(output)
    assert sorted(store.list("eval/videos")) == ["eval/videos/0000.mp4", "eval/videos/0001.mp4"]
    report = json.loads(store.read_text("eval/report.json"))
    assert report["metrics"] == ev["metrics"] and [c["id"] for c in report["cases"]] == ["0000", "0001"]


def test_a_failed_evaluation_is_reported_not_fatal(synth_dataset, tmp_path):
    import torch

    from polyvivid.train.evaluation import run_evaluation

    manifest = training_manifest(synth_dataset, str(tmp_path / "run"), evaluation={
        "cases": str(tmp_path / "missing.jsonl"), "models": {"preset": "tiny"}})
    spec = TrainingSpec.model_validate(manifest["spec"])
    out = run_evaluation(spec, open_store(str(tmp_path / "run")), torch.device("cpu"))
    assert "missing.jsonl" in out["error"] and "cannot read" in out["error"]


def test_the_spec_says_which_models_a_metric_needs(synth_dataset, tmp_path):
    manifest = training_manifest(synth_dataset, str(tmp_path / "run"), evaluation={"cases": "s3://b/cases.jsonl",
                                                                                   "metrics": ["dino"]})
    result = polyvivid("train", str(write_spec(tmp_path / "spec.yaml", manifest)))
    assert result.returncode == 2
    assert "metric 'dino' needs models.dinov2, models.grounding, models.sam2" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
