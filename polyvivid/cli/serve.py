"""`polyvivid serve`: a PolyVividService's HTTP API on Ray Serve, here (--local) or as the RayService's
serveConfigV2 (--print-config)."""

from __future__ import annotations

import os
import sys

from ..model.options import PRESET_NAMES
from .options import UsageError, add_ray_auth_flag, int_in, load_spec, output_uri


def register(subparsers) -> None:
    srv = subparsers.add_parser(
        "serve", help="serve a PolyVividService over HTTP (Ray Serve)",
        description="Run the PolyVividService in SPEC: an HTTP API (POST /v1/videos, GET /v1/videos/ID, "
                    "GET /v1/videos/ID/content, DELETE /v1/videos/ID, /healthz, /readyz, OpenAPI at /docs) in "
                    "front of generator replicas holding the model. --local starts Ray and Serve on 127.0.0.1 "
                    "and serves until Ctrl-C; --print-config prints the serveConfigV2 a RayService runs. "
                    "/v1 needs a bearer token: $POLYVIVID_API_TOKEN when set (required with "
                    "spec.apiTokenSecretRef), else one generated once into ~/.config/polyvivid/api-token "
                    "(which `polyvivid request` reads). --insecure-no-auth (or spec.allowUnauthenticated) runs "
                    "open.",
        epilog="example: polyvivid serve service.yaml --local --port 8000 --model out/run1/final",
    )
    srv.add_argument("spec", help="PolyVividService YAML")
    mode = srv.add_mutually_exclusive_group(required=True)
    mode.add_argument("--local", action="store_true", help="start Ray + Serve here, on 127.0.0.1")
    mode.add_argument("--print-config", action="store_true", help="print the Serve config (serveConfigV2) as YAML")
    srv.add_argument("--port", type=int_in(1, 65535), default=8000, help="HTTP port for --local (default 8000)")
    srv.add_argument("--model", metavar="DIR_OR_URI",
                     help="weights to serve, overriding spec.model (e.g. a training run's final/)")
    srv.add_argument("--output", type=output_uri, help="where job records and videos go, overriding spec.output")
    srv.add_argument("--store", metavar="ENDPOINT", help="S3 endpoint, overriding spec.storage.endpoint")
    srv.add_argument("--insecure-no-auth", action="store_true",
                     help="serve /v1 with no token: anyone who reaches the port can submit, read and cancel jobs")
    add_ray_auth_flag(srv)
    srv.set_defaults(run=run)


def run(args) -> int:
    from ..api import PolyVividService
    from ..serve.config import serve_config_v2

    def absolute(ref):  # Ray replicas do not share this process's working directory
        return ref if ref is None or "://" in ref or ref in PRESET_NAMES else os.path.abspath(ref)

    updates = {"output": absolute(args.output)} if args.output else {}
    spec = load_spec(args, PolyVividService, **updates)
    if "://" not in spec.output:
        spec = spec.model_copy(update={"output": absolute(spec.output)})
    args.model = absolute(args.model) or absolute(spec.model.uri)
    if args.model is None and spec.model.training is not None:
        raise UsageError(f"{args.spec}: spec.model names PolyVividTraining {spec.model.training!r}; outside the "
                         "cluster give its final/ with --model URI")
    if args.print_config:
        import yaml

        print(yaml.safe_dump(serve_config_v2(spec, args.model), sort_keys=False), end="")
        return 0
    from ..ray_local import RayAuthOff, check_auth
    from ..serve.local import serve_local

    try:
        check_auth(args.insecure_ray_no_auth)  # before anything is written or started
        spec = _local_api_auth(args, spec)
        serve_local(spec, args.model, args.port, on_ready=lambda line: print(line, flush=True),
                    allow_ray_no_auth=args.insecure_ray_no_auth)
    except RayAuthOff as e:
        raise UsageError(str(e)) from None
    return 0


def _local_api_auth(args, spec):
    """The token `serve --local` requires ($POLYVIVID_API_TOKEN, or one generated into a 0600 file), or
    none when told to run open; the replicas read it from the environment, as in the cluster."""
    from ..serve.config import TOKEN_ENV, local_token, local_token_file

    if args.insecure_no_auth:
        if spec.api_token_secret_ref is not None:
            raise UsageError(f"{args.spec}: spec.apiTokenSecretRef and --insecure-no-auth contradict each other")
        spec = spec.model_copy(update={"allow_unauthenticated": True})
    if spec.allow_unauthenticated:
        os.environ.pop(TOKEN_ENV, None)
        print("polyvivid: warning: the HTTP API runs without authentication: anyone who reaches the port can "
              "submit, read and cancel jobs", file=sys.stderr, flush=True)
    elif os.environ.get(TOKEN_ENV):
        print(f"API token: from ${TOKEN_ENV}", flush=True)
    elif spec.api_token_secret_ref is not None:
        raise UsageError(f"{args.spec}: spec.apiTokenSecretRef names Secret {spec.api_token_secret_ref.name!r}; "
                         f"locally put the token in ${TOKEN_ENV}")
    else:
        os.environ[TOKEN_ENV] = local_token()
        print(f"API token: in {local_token_file()} (readable by you only); `polyvivid request` reads it from "
              f"there, other clients send it as 'Authorization: Bearer TOKEN' "
              f"(export {TOKEN_ENV}=$(cat {local_token_file()}))", flush=True)
    return spec
