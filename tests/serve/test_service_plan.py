"""The memory planner for a service (issue 22, item 2): each phase of its largest request, per GPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from benchmarks.step_memory import measure
from polyvivid.api.service import ServiceSpec
from polyvivid.memory_plan import INFERENCE_ACTIVATIONS, service_plan, service_refusal
from tests.train.test_memory_plan import CPU_CONFIG


def test_the_inference_working_set_is_measured():
    """One no-grad forward on CPU at 33x512x256 (4608 video tokens, hidden 256, fp32): its peak live memory
    above the built model (benchmarks/step_memory.py) is INFERENCE_ACTIVATIONS D-units a token, within 10%."""
    measured = measure(CPU_CONFIG, 33, 512, 256, "inference")
    d = CPU_CONFIG["num_attention_heads"] * CPU_CONFIG["attention_head_dim"]
    units = measured["peak_bytes"] / ((measured["video_tokens"] + measured["text_tokens"]) * d * 4)
    assert measured["video_tokens"] == 4608
    assert 0.9 <= units / INFERENCE_ACTIVATIONS <= 1.1, units


def service(**spec) -> ServiceSpec:
    body = {"model": {"uri": "s3://models/polyvivid"}, "output": "s3://jobs", "worker": {"gpus": 8},
            "replicas": {"gpusPerReplica": 1}}  # limits' defaults: 129 x 720 x 1280, 4 subjects
    body.update(spec)
    return ServiceSpec.model_validate(body)


def by_phase(spec: ServiceSpec) -> dict:
    return {row.phase: row for row in service_plan(spec)}


def test_720p_x_129_fits_80_gib_with_the_memory_defaults_and_not_without():
    rows = by_phase(service())
    assert rows["denoise"].size == "129x720x1280" and all(r.fits for r in rows.values())
    assert rows["denoise"].encoders_gib == 0 and rows["encode"].encoders_gib > 15  # LLaVA 8B only while encoding
    assert rows["decode"].activations_gib < 5  # tiled decode
    # LLaVA kept on the GPU and an untiled decode: the measurement, 58 GB denoising and 82 GB decoding
    # (54 and 76 GiB), against the planner's
    old = by_phase(service(memory={"vaeTiling": False, "offloadEncoders": False}))
    assert 54 <= old["denoise"].per_gpu_gib <= 62 and 76 <= old["decode"].per_gpu_gib <= 84
    assert not old["decode"].fits
    assert service_refusal(service(memory={"vaeTiling": False, "offloadEncoders": False})).startswith(
        "spec.limits: a 129x720x1280 request with 4 subjects needs an estimated ")


def test_sequence_parallel_fp8_and_group_offload_shrink_what_they_should():
    one, eight = by_phase(service()), by_phase(service(replicas={"gpusPerReplica": 8}, worker={"gpus": 8}))
    assert eight["denoise"].processes == 8 and eight["denoise"].transformer_gib == one["denoise"].transformer_gib
    assert eight["denoise"].activations_gib < 0.2 * one["denoise"].activations_gib  # 1/8, plus all-to-all buffers
    fp8 = by_phase(service(memory={"fp8Weights": True}))
    assert fp8["denoise"].transformer_gib == pytest.approx(one["denoise"].transformer_gib / 2, rel=0.01)
    offloaded = by_phase(service(memory={"groupOffload": True}))
    assert offloaded["denoise"].transformer_gib < 3  # two blocks and the root on the GPU
    small = by_phase(service(worker={"gpus": 1, "gpuMemoryGib": 24}, memory={"fp8Weights": True}))
    assert not small["encode"].fits  # LLaVA 8B and the 13B transformer do not share 24 GiB
    assert service_refusal(service(replicas={"gpusPerReplica": 5}, worker={"gpus": 8})) == \
        "spec.replicas: 5 processes a replica do not divide the model's 24 attention heads"


def test_polyvivid_plan_takes_a_service(tmp_path):
    def plan(spec: dict, *args):
        path = tmp_path / "service.yaml"
        path.write_text(yaml.safe_dump({"apiVersion": "polyvivid.io/v1alpha1", "kind": "PolyVividService",
                                        "metadata": {"name": "s"}, "spec": spec}))
        return subprocess.run([sys.executable, "-m", "polyvivid.cli", "plan", str(path), *args], capture_output=True,
                              text=True, timeout=120)

    body = service().model_dump(by_alias=True, exclude_none=True, mode="json")
    table = plan(body)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == "a replica of 1 process, one GPU of 80 GiB each; the largest request; GiB per GPU (decode: rank 0):"
    assert lines[1].split()[:3] == ["phase", "size", "subjects"] and [line.split()[0] for line in lines[2:5]] == \
        ["encode", "denoise", "decode"]
    untiled = plan({**body, "memory": {"vaeTiling": False, "offloadEncoders": False}}, "--json")
    rows = [json.loads(line) for line in untiled.stdout.splitlines()]
    assert untiled.returncode == 1 and [r["fits"] for r in rows] == [True, True, False]
    on_141 = plan({**body, "memory": {"vaeTiling": False, "offloadEncoders": False}}, "--gpu-memory", "141GiB")
    assert on_141.returncode == 0
    heads = plan({**body, "replicas": {"gpusPerReplica": 0, "sequenceParallel": 5}})
    assert heads.returncode == 0 and "host memory is not planned" in heads.stdout
    split = plan({**body, "replicas": {"gpusPerReplica": 5}, "worker": {"gpus": 8}})
    assert split.returncode == 1 and split.stdout.splitlines()[-1] == \
        "spec.replicas: 5 processes a replica do not divide the model's 24 attention heads"


def test_the_operator_refuses_a_service_that_cannot_fit():
    from polyvivid_operator.config import OperatorConfig
    from polyvivid_operator.validation import InvalidSpec, check_service

    ok = service(apiTokenSecretRef={"name": "t"})
    check_service(ok, OperatorConfig())
    with pytest.raises(InvalidSpec, match=r"while it is decoded .* of 80 GiB; see `polyvivid plan`$"):
        check_service(service(apiTokenSecretRef={"name": "t"}, memory={"vaeTiling": False, "offloadEncoders": False}),
                      OperatorConfig())
