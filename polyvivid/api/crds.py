"""CustomResourceDefinitions generated from the pydantic models: one schema, one place.

`polyvivid crds --out manifests/crds` writes them; a test fails when the checked-in files drift.
Pydantic's JSON Schema (2020-12) becomes Kubernetes' structural OpenAPI v3.0 subset: $refs inlined,
`X | None` as `nullable`, numeric exclusive bounds as OpenAPI 3.0 booleans, Literals as enums,
defaults kept (the API server applies them), titles and `additionalProperties: false` dropped
(the API server prunes unknown fields itself). Rules a schema cannot say (exactly one of ...) stay
in the pydantic validators and come back as status conditions from the operator. The status schema
comes from each kind's status model (status.py), which is also what the operator writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from .common import GROUP, VERSION
from .curation import CurationJob
from .service import PolyVividService
from .status import CurationStatus, ResourceStatus, ServiceStatus, TrainingStatus
from .training import PolyVividTraining


@dataclass(frozen=True)
class Resource:
    """One kind's CRD: its model (the spec), its status model, its names, its printer columns."""

    model: type[BaseModel]
    status: type[ResourceStatus]
    plural: str
    short_name: str
    columns: tuple[dict, ...]


PHASE = {"name": "Phase", "type": "string", "jsonPath": ".status.phase"}
REASON = {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
          "description": "why the resource is in its phase (its Ready condition's reason)"}

RESOURCES: dict[str, Resource] = {
    "PolyVividTraining": Resource(PolyVividTraining, TrainingStatus, "polyvividtrainings", "pvt", (
        PHASE, REASON,
        {"name": "Stage", "type": "string", "jsonPath": ".status.stage"},
        {"name": "Step", "type": "integer", "jsonPath": ".status.step"},
        {"name": "Progress", "type": "integer", "jsonPath": ".status.progressPercentage",
         "description": "percent of the steps done"},
        {"name": "ETA(s)", "type": "integer", "jsonPath": ".status.estimatedRemainingSeconds", "priority": 1},
        {"name": "Loss", "type": "number", "jsonPath": ".status.loss", "priority": 1},
    )),
    "CurationJob": Resource(CurationJob, CurationStatus, "curationjobs", "cj", (
        PHASE, REASON,
        {"name": "Clips", "type": "integer", "jsonPath": ".status.clipsWritten"},
        {"name": "Videos", "type": "integer", "jsonPath": ".status.videos", "priority": 1},
    )),
    "PolyVividService": Resource(PolyVividService, ServiceStatus, "polyvividservices", "pvs", (
        PHASE, REASON,
        {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
    )),
}
AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}

_KEEP = {"type", "description", "default", "enum", "minimum", "maximum", "multipleOf", "minLength", "maxLength",
         "pattern", "minItems", "maxItems", "format", "nullable"}


def structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """One pydantic JSON Schema node -> a structural OpenAPI v3.0 node."""
    if "$ref" in schema:  # the field's own description/default win over the referenced model's
        resolved = structural(defs[schema["$ref"].rsplit("/", 1)[1]], defs)
        return {**resolved, **{k: v for k, v in schema.items() if k in ("description", "default") and v is not None}}
    any_of = schema.get("anyOf")
    if any_of:
        options = [o for o in any_of if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express a union of {len(options)} types in a structural schema: {schema}")
        out = structural({**options[0], **{k: v for k, v in schema.items() if k != "anyOf"}}, defs)
        if len(options) < len(any_of):
            out["nullable"] = True
        return out
    out: dict[str, Any] = {k: v for k, v in schema.items() if k in _KEEP and not (k == "default" and v is None)}
    if "const" in schema:
        out["enum"] = [schema["const"]]
    if "exclusiveMinimum" in schema:
        out.update(minimum=schema["exclusiveMinimum"], exclusiveMinimum=True)
    if "exclusiveMaximum" in schema:
        out.update(maximum=schema["exclusiveMaximum"], exclusiveMaximum=True)
    if "enum" in out and "type" not in out:
        out["type"] = _json_type(out["enum"][0])
    if out.get("type") == "object" or "properties" in schema:
        out["type"] = "object"
        if "properties" in schema:
            out["properties"] = {name: structural(prop, defs) for name, prop in schema["properties"].items()}
            if schema.get("required"):
                out["required"] = list(schema["required"])
        elif isinstance(schema.get("additionalProperties"), dict):  # a map, e.g. labels
            out["additionalProperties"] = structural(schema["additionalProperties"], defs)
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("type") == "array":
        out["items"] = structural(schema.get("items", {}), defs)
    if "type" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["x-kubernetes-preserve-unknown-fields"] = True  # "any": left to the pydantic validators
    return out


def _json_type(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string"}[type(value)]


def _schema(model: type[BaseModel]) -> tuple[dict[str, Any], dict[str, Any]]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return schema, schema.get("$defs", {})


def crd(kind: str) -> dict[str, Any]:
    resource = RESOURCES[kind]
    model, plural = resource.model, resource.plural
    schema, defs = _schema(model)
    spec = structural(schema["properties"]["spec"], defs)
    status = structural(*_schema(resource.status))
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "polyvivid"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower(),
                      "shortNames": [resource.short_name], "categories": ["polyvivid"]},
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [*resource.columns, AGE],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": (model.__doc__ or kind).strip().splitlines()[0],
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec,
                        "status": status,
                    },
                }},
            }],
        },
    }


def all_crds() -> dict[str, dict[str, Any]]:
    """file name -> CRD, in the layout of manifests/crds."""
    return {f"{GROUP}_{resource.plural}.yaml": crd(kind) for kind, resource in RESOURCES.items()}
