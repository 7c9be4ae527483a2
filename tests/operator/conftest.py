"""The operator against an API server over HTTP: kmock's emulator (fixed, tests/kube/apiserver.py)
serving our CRDs and declaring TrainJob, PyTorchJob, RayJob and RayService, and the real operator run by kopf
in a thread (KopfRunner). No controllers for the children run here (no cluster): tests play them by
writing the children's status."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import jsonschema
import pytest
import requests
import yaml
from kopf.testing import KopfRunner
from pydantic import ValidationError

from polyvivid.api.common import GROUP
from polyvivid.api.crds import RESOURCES

from ..conftest import free_port
from ..kube.apiserver import RunningApiServer
from ..kube.client import Kube
from ..openapi import UPSTREAM_FILES, as_jsonschema, crd_schema

ROOT = Path(__file__).resolve().parents[2]
CHILD_KINDS = [("trainer.kubeflow.org/v1alpha1", "trainjobs", "TrainJob"), ("kubeflow.org/v1", "pytorchjobs", "PyTorchJob"),
               ("ray.io/v1", "rayjobs", "RayJob"),
               ("ray.io/v1", "rayservices", "RayService")]


def our_crds() -> list[dict]:
    return [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "manifests" / "crds").glob("*.yaml"))]


def status_problems(server: RunningApiServer) -> list[str]:
    """Every status the operator wrote (each version stored) against its kind's status model, unknown
    fields refused, and the CRD's status schema: what a real API server would reject or prune. The
    emulator stores any status, so a handler writing a field the schema lacks shows up only here."""
    schemas = {crd["spec"]["names"]["kind"]: crd_schema(crd, "v1alpha1")["properties"]["status"] for crd in our_crds()}
    validators = {kind: jsonschema.Draft4Validator(as_jsonschema(schema)) for kind, schema in schemas.items()}
    problems = []
    for obj in server.api.history(GROUP):
        if "status" not in obj:
            continue
        where = f"{obj['kind']}/{obj['metadata']['name']} status"
        try:
            RESOURCES[obj["kind"]].status.model_validate(obj["status"])
        except ValidationError as e:
            problems.append(f"{where}: {e}")
        problems += [f"{where}.{'.'.join(map(str, e.absolute_path))}: {e.message}"
                     for e in validators[obj["kind"]].iter_errors(obj["status"])]
    return problems


def immutable_fields() -> dict[tuple[str, str], list[tuple[str, ...]]]:
    """The TrainJob's spec fields that its upstream CRD makes immutable (`self == oldSelf`), for the emulator
    to refuse changing them as a real API server does; none where the upstream CRDs are absent."""
    folder = Path(os.environ.get("POLYVIVID_UPSTREAM_CRDS", ROOT.parent / "shared" / "crds" / "upstream"))
    path = folder / UPSTREAM_FILES["TrainJob"]
    if not path.exists():
        return {}
    spec = crd_schema(yaml.safe_load(path.read_text()), "v1alpha1")["properties"]["spec"]
    paths = [("spec", field) for field, schema in spec["properties"].items()
             if any(rule["rule"] == "self == oldSelf" for rule in schema.get("x-kubernetes-validations", []))]
    return {("trainer.kubeflow.org/v1alpha1", "trainjobs"): paths}


@pytest.fixture
def apiserver(tmp_path, monkeypatch):
    with RunningApiServer(tmp_path, our_crds(), CHILD_KINDS, immutable_fields()) as server:
        monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig))
        yield server
        assert status_problems(server) == []


@pytest.fixture
def kube(apiserver) -> Kube:
    return Kube(apiserver.url, namespace="ml")


@contextlib.contextmanager
def running_operator(monkeypatch, metrics_port: int | None = None, namespaces: list[str] = ()):
    """The real operator (`kopf run -m polyvivid_operator`) until the block ends; fails the test on a crash.
    namespaces: watch only these (as the chart's watchNamespaces does), else all."""
    port = metrics_port or free_port()
    monkeypatch.setenv("POLYVIVID_METRICS_PORT", str(port))
    monkeypatch.setenv("POLYVIVID_IMAGE", "registry.test/polyvivid:ci")
    scope = [f"--namespace={ns}" for ns in namespaces] or ["--all-namespaces"]
    args = ["run", "--standalone", *scope, "-m", "polyvivid_operator"]
    with KopfRunner(args, timeout=60) as runner:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # ready once its metrics endpoint answers
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"http://127.0.0.1:{port}/metrics", timeout=1).ok:
                    break
            time.sleep(0.1)
        runner.metrics_url = f"http://127.0.0.1:{port}/metrics"
        yield runner
    assert runner.exception is None, runner.exception
    assert runner.exit_code == 0, runner.output


@pytest.fixture
def operator(apiserver, monkeypatch):
    with running_operator(monkeypatch) as runner:
        yield runner
