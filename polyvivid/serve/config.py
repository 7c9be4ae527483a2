"""What a RayService's serveConfigV2 holds for a PolyVividService (no Ray import: the operator uses it)."""

from __future__ import annotations

from ..api.service import ServiceSpec

IMPORT_PATH = "polyvivid.serve.app:build_app"
APP_NAME = "polyvivid"
TOKEN_ENV = "POLYVIVID_API_TOKEN"  # the API token: from the spec's Secret in the cluster, never in args or specs


def serve_config_args(spec: ServiceSpec, model_uri: str | None = None) -> dict:
    """The `args` of the application: the spec, and the model reference resolved (a PolyVividTraining
    name becomes its final/ URI, which only the operator can know)."""
    model = spec.model
    ref = model_uri or model.uri or model.preset
    if ref is None:
        raise ValueError(f"model.training {model.training!r} must be resolved to a URI (its final/) first")
    return {"spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True), "model": ref}


def serve_config_v2(spec: ServiceSpec, model_uri: str | None = None) -> dict:
    """The Serve config (serveConfigV2 of a RayService, or `serve deploy`) running this service."""
    return {"applications": [{"name": APP_NAME, "route_prefix": "/", "import_path": IMPORT_PATH,
                              "args": serve_config_args(spec, model_uri)}]}
