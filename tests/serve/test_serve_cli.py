"""`polyvivid serve` and `polyvivid request` from the command line: config output and one-line errors."""

from __future__ import annotations

import pytest
import yaml

from ..train.conftest import polyvivid as run_cli
from .conftest import service_manifest, write_manifest

ENV = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}  # no token, no store settings from the caller's shell


def polyvivid(*args, env=None):
    return run_cli(*args, env={**ENV, **(env or {})}, timeout=120)


def test_print_config_is_the_serve_config_a_rayservice_runs(tmp_path):
    spec = write_manifest(tmp_path / "s.yaml", service_manifest("s3://bucket/jobs", model={"training": "run1"},
                                                                 apiTokenSecretRef={"name": "api"}))
    result = polyvivid("serve", str(spec), "--print-config", "--model", "s3://bucket/run1/final")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    (app,) = config["applications"]
    assert app["import_path"] == "polyvivid.serve.app:build_app" and app["route_prefix"] == "/"
    assert app["args"]["model"] == "s3://bucket/run1/final"
    assert app["args"]["spec"]["limits"]["queueLength"] == 4
    assert app["args"]["spec"]["apiTokenSecretRef"] == {"name": "api", "key": "token"}  # a reference, no token
    # The import path resolves to the builder, and the builder accepts those args (no Ray cluster needed).
    from polyvivid.serve.app import build_app

    application = build_app(app["args"])
    assert type(application).__name__ == "Application"


@pytest.mark.parametrize("args,manifest_changes,env,expected", [
    ((), {}, {}, "one of the arguments --local --print-config is required"),
    (("--local",), {"model": {"training": "run1"}}, {}, "give its final/ with --model URI"),
    (("--local",), {"apiTokenSecretRef": {"name": "api"}}, {}, "POLYVIVID_API_TOKEN"),
    (("--local",), {}, {"RAY_AUTH_MODE": "disabled"}, "RAY_AUTH_MODE=disabled turns Ray's token authentication "
                                                      "off; unset it, or pass --insecure-ray-no-auth"),
    (("--local", "--insecure-no-auth"), {"apiTokenSecretRef": {"name": "api"}}, {}, "contradict each other"),
    (("--local", "--port", "70000"), {}, {}, "argument --port: 70000 is outside 1..65535"),
    (("--local",), {"limits": {"maxFrames": 8}}, {}, "maxFrames must be of the form 4k+1"),
    (("--local",), {"replicas": {"min": 3, "max": 2}}, {}, "min (3) exceeds max (2)"),
    (("--local",), {"replicas": {"gpusPerReplica": 2.5}}, {}, "gpusPerReplica above 1 must be a whole number"),
    (("--local",), {"replicas": {"gpusPerReplica": 4, "sequenceParallel": 2}}, {}, "sequenceParallel must be 4"),
    (("--local",), {"replicas": {"gpusPerReplica": 0.5, "sequenceParallel": 2}}, {}, "needs a GPU per process"),
])
def test_bad_serve_invocations_exit_2_with_one_line(tmp_path, args, manifest_changes, env, expected):
    spec = write_manifest(tmp_path / "s.yaml", service_manifest(str(tmp_path / "jobs"), **manifest_changes))
    result = polyvivid("serve", str(spec), *args, env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("polyvivid: error: ") and expected in lines[0], lines[0]


def test_request_to_a_server_that_is_not_there_exits_2(tmp_path):
    from ..conftest import free_port

    result = polyvivid("request", f"http://127.0.0.1:{free_port()}", "--prompt", "A man", "--output",
                       str(tmp_path / "v.mp4"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Connection refused" in lines[-1] and "Traceback" not in result.stderr
    assert not (tmp_path / "v.mp4").exists()


def test_replicas_become_serve_deployment_options():
    from polyvivid.api import PolyVividService, load_resource
    from polyvivid.serve.app import generator_options

    def options(replicas):
        manifest = service_manifest("/tmp/jobs", replicas=replicas)
        return generator_options(load_resource(manifest, PolyVividService).spec)

    fixed = options({"min": 2, "max": 2, "gpusPerReplica": 1, "cpusPerReplica": 4, "maxOngoingRequests": 2})
    assert fixed == {"ray_actor_options": {"num_cpus": 4, "num_gpus": 1}, "max_ongoing_requests": 2,
                     "num_replicas": 2}
    scaled = options({"min": 0, "max": 8})
    assert scaled["autoscaling_config"] == {"min_replicas": 0, "max_replicas": 8, "target_ongoing_requests": 1}
    assert "num_replicas" not in scaled and scaled["ray_actor_options"]["num_gpus"] == 1.0
    # gpusPerReplica 8: each request on 8 processes, one GPU each, packed on one node
    parallel = options({"gpusPerReplica": 8, "cpusPerReplica": 16})
    assert parallel["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 1}
    assert parallel["placement_group_bundles"] == [{"CPU": 2, "GPU": 1}] * 8
    assert parallel["placement_group_strategy"] == "STRICT_PACK"
    on_cpu = options({"gpusPerReplica": 0, "cpusPerReplica": 2, "sequenceParallel": 2})
    assert on_cpu["placement_group_bundles"] == [{"CPU": 1}] * 2
