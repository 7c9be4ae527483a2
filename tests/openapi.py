"""Validating objects against Kubernetes CRD schemas (OpenAPI v3.0 subset) with jsonschema, and their
CEL rules (x-kubernetes-validations) with cel-python."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import celpy
import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def as_jsonschema(node: dict) -> dict:
    """OpenAPI 3.0 as Kubernetes uses it (nullable, x-kubernetes-*) -> JSON Schema draft 4."""
    out = {k: v for k, v in node.items() if not k.startswith("x-kubernetes") and k != "nullable"}
    if "properties" in out:
        out["properties"] = {k: as_jsonschema(v) for k, v in out["properties"].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = as_jsonschema(out["items"])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = as_jsonschema(out["additionalProperties"])
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def cel_errors(schema: dict, value, path: str = "") -> list[str]:
    """Evaluate every x-kubernetes-validations rule on the value it guards, as the API server does on
    create (rules about oldSelf, i.e. transitions, do not apply to a new object)."""
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue
        result = _cel_program(rule["rule"]).evaluate({"self": celpy.json_to_cel(value)})
        if result is not True and not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
            errors.append(f"{path or '.'}: {rule.get('message', rule['rule'])}")
    if isinstance(value, dict):
        for key, sub in value.items():
            if key in schema.get("properties", {}):
                errors += cel_errors(schema["properties"][key], sub, f"{path}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += cel_errors(schema["additionalProperties"], sub, f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, sub in enumerate(value):
            errors += cel_errors(schema["items"], sub, f"{path}[{i}]")
    return errors


@functools.cache
def _cel_program(rule: str):
    env = celpy.Environment()
    return env.program(env.compile(rule))


def crd_schema(crd: dict, version: str) -> dict:
    (v,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return v["schema"]["openAPIV3Schema"]


def crd_validator(crd: dict, version: str) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(as_jsonschema(crd_schema(crd, version)))


def upstream_crd(file_name: str) -> dict:
    """An upstream CRD from ../shared/crds/upstream (or $POLYVIVID_UPSTREAM_CRDS); skips when absent.
    Parsed once per session (the KubeRay CRDs are megabytes): do not modify the result."""
    folder = Path(os.environ.get("POLYVIVID_UPSTREAM_CRDS", ROOT.parent / "shared" / "crds" / "upstream"))
    path = folder / file_name
    if not path.exists():
        pytest.skip(f"upstream CRD {file_name} not found in {folder} (set POLYVIVID_UPSTREAM_CRDS)")
    return _parsed(path)


@functools.cache
def _parsed(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@functools.cache
def _validator(file_name: str, version: str) -> jsonschema.Draft4Validator:
    return crd_validator(upstream_crd(file_name), version)


def upstream_validator(file_name: str, version: str = "v1") -> jsonschema.Draft4Validator:
    return _validator(file_name, version)


UPSTREAM_FILES = {"PyTorchJob": "kubeflow.org_pytorchjobs.yaml", "RayJob": "ray.io_rayjobs.yaml",
                  "RayService": "ray.io_rayservices.yaml", "TrainJob": "trainer.kubeflow.org_trainjobs.yaml",
                  "ClusterTrainingRuntime": "trainer.kubeflow.org_clustertrainingruntimes.yaml"}


def upstream_errors(obj: dict) -> list[str]:
    """Schema and CEL errors of a child object against its kind's upstream CRD (empty: valid)."""
    file_name, version = UPSTREAM_FILES[obj["kind"]], obj["apiVersion"].rsplit("/", 1)[1]
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in upstream_validator(file_name, version).iter_errors(obj)]
    return errors + cel_errors(crd_schema(upstream_crd(file_name), version), obj)
