"""What a RayService's serveConfigV2 holds for a PolyVividService (no Ray import: the operator uses it)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from ..api.service import ServiceSpec

IMPORT_PATH = "polyvivid.serve.app:build_app"
APP_NAME = "polyvivid"
TOKEN_ENV = "POLYVIVID_API_TOKEN"  # the API token: from the spec's Secret in the cluster, never in args or specs


def local_token_file() -> Path:
    """Where `serve --local` keeps the token it generates, and where `polyvivid request` looks for one:
    $XDG_CONFIG_HOME/polyvivid/api-token (~/.config/...), readable by this user only."""
    return Path(os.environ.get("XDG_CONFIG_HOME") or "~/.config").expanduser() / "polyvivid" / "api-token"


def read_local_token() -> str | None:
    """The token `serve --local` generated, if there is one (what `polyvivid request` sends by default)."""
    path = local_token_file()
    return (path.read_text().strip() or None) if path.is_file() else None


def local_token() -> str:
    """The token in local_token_file(), made (random, 0600) the first time: the same one across restarts,
    so clients keep working, and never printed (logs are not a place for secrets)."""
    token = read_local_token()
    path = local_token_file()
    if token:
        path.chmod(0o600)
        return token
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


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
