"""PolyVividTraining: the paper's defaults, and errors that name the field."""

from __future__ import annotations

import pytest

from polyvivid.api import PolyVividTraining, SpecError, load_resource


def manifest(**spec):
    base = {"model": {"preset": "tiny"}, "dataset": {"uri": "s3://data/set"}, "output": "s3://runs/r1"}
    return {"apiVersion": "polyvivid.io/v1alpha1", "kind": "PolyVividTraining", "metadata": {"name": "r1"},
            "spec": {**base, **spec}}


def test_defaults_are_the_papers_schedule():
    spec = load_resource(manifest(), PolyVividTraining).spec
    assert [s.name for s in spec.stages] == ["identity", "interaction"]
    assert [s.steps for s in spec.stages] == [5000, 5000] and [s.low_res_steps for s in spec.stages] == [1000, 1000]
    assert spec.stages[0].max_subjects == 1 and spec.stages[1].max_subjects > 1
    assert spec.global_batch_size == 256 and spec.total_steps == 10000
    assert spec.parallelism == "fsdp" and spec.precision == "bf16"
    low, full = spec.stages[0].low_resolution, spec.stages[0].resolution
    assert low.height * low.width < full.height * full.width


def test_yaml_file_round_trip(tmp_path):
    import yaml

    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(manifest(globalBatchSize=8, lora={"rank": 8, "alpha": 8})))
    spec = load_resource(path, PolyVividTraining).spec
    assert spec.global_batch_size == 8 and spec.lora.rank == 8


@pytest.mark.parametrize("change, field", [
    (dict(globalBatchSize=0), "spec.globalBatchSize"),
    (dict(stages=[{"name": "identity", "steps": 10, "lowResSteps": 20}]), "spec.stages[0]"),
    (dict(stages=[{"name": "identity", "resolution": {"height": 50, "width": 64, "frames": 9}}]),
     "spec.stages[0].resolution.height"),
    (dict(stages=[{"name": "identity", "resolution": {"height": 64, "width": 64, "frames": 8}}]),
     "spec.stages[0].resolution.frames"),
    (dict(stages=[{"name": "identity"}, {"name": "identity"}]), "stage names must be unique"),
    (dict(model={}), "spec.model"),
    (dict(model={"preset": "tiny", "llava": "s3://x"}), "spec.model"),
    (dict(dataset={}), "spec.dataset"),
    (dict(optimizer={"learningRate": -1}), "spec.optimizer.learningRate"),
    (dict(parallelism="zero3"), "spec.parallelism"),
    (dict(unknownField=1), "spec.unknownField"),
])
def test_invalid_specs_name_the_field(change, field):
    with pytest.raises(SpecError) as err:
        load_resource(manifest(**change), PolyVividTraining)
    assert field in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load_resource(tmp_path / "missing.yaml", PolyVividTraining)
    (tmp_path / "bad.yaml").write_text("a: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_resource(tmp_path / "bad.yaml", PolyVividTraining)
