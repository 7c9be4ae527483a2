"""Validating objects against Kubernetes CRD schemas (OpenAPI v3.0 subset) with jsonschema."""

from __future__ import annotations

import os
from pathlib import Path

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


def crd_validator(crd: dict, version: str) -> jsonschema.Draft4Validator:
    (v,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return jsonschema.Draft4Validator(as_jsonschema(v["schema"]["openAPIV3Schema"]))


def upstream_validator(file_name: str, version: str = "v1") -> jsonschema.Draft4Validator:
    """A validator for an upstream CRD in ../shared/crds/upstream (or $POLYVIVID_UPSTREAM_CRDS)."""
    folder = Path(os.environ.get("POLYVIVID_UPSTREAM_CRDS", ROOT.parent / "shared" / "crds" / "upstream"))
    path = folder / file_name
    if not path.exists():
        pytest.skip(f"upstream CRD {file_name} not found in {folder} (set POLYVIVID_UPSTREAM_CRDS)")
    return crd_validator(yaml.safe_load(path.read_text()), version)
