"""A one-machine Ray cluster that only this machine can reach: every Ray process on 127.0.0.1, token auth on.

`serve --local` and `curate --local` (and the tests and benchmarks) start Ray through `init_local_ray`.

Why an environment variable and not `ray.init(_node_ip_address="127.0.0.1")`: Ray replaces a loopback
node address with the machine's reachable one (`services.resolve_ip_for_localhost`), and its gRPC
servers (GCS, raylet, object manager, every worker) listen on all interfaces unless the node address is
loopback. With RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, Ray's single-machine mode (its default on macOS and
Windows), the node address stays 127.0.0.1 and every Ray process listens on loopback only: GCS,
raylets, object manager, workers, the dashboard, metrics and runtime-env agents (checked with the
listening sockets of the whole process tree in tests/test_local_listeners.py). Ray reads the variable
when it is imported, and every process it starts inherits it.

One Ray server ignores the node address: every Serve replica starts an inter-deployment gRPC server on
"[::]:0" (ray/serve/_private/replica.py). `loopback_grpc_ports`, run in every worker process of a local
cluster (runtime_env worker_process_setup_hook) before Serve's modules load, makes Ray's one helper that
adds gRPC ports (ray._common.tls_utils.add_port_to_grpc_server) bind a wildcard address to 127.0.0.1.

Ray 2.60's token auth (a token in ~/.ray/auth_token, made on first use) stays on: another user of this
machine who reaches a loopback port still needs the token. RAY_AUTH_MODE=disabled turns it off only
when the caller says so (`allow_no_auth`, the CLI's --insecure-ray-no-auth), with a warning.
"""

from __future__ import annotations

import os
import sys

from .processes import LOOPBACK

SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
AUTH_ENV = "RAY_AUTH_MODE"


class RayAuthOff(RuntimeError):
    """RAY_AUTH_MODE=disabled is set but the caller did not ask to run without Ray's token auth."""


def check_auth(allow_no_auth: bool) -> None:
    """Refuse to start Ray with its token auth off unless asked; warn when asked."""
    if allow_no_auth:
        if os.environ.get(AUTH_ENV) == "disabled":  # said once already
            return
        os.environ[AUTH_ENV] = "disabled"
        print("polyvivid: warning: Ray token authentication is OFF: any local user who reaches Ray's loopback "
              "ports can run code as you", file=sys.stderr, flush=True)
    elif os.environ.get(AUTH_ENV, "").lower() == "disabled":
        raise RayAuthOff(f"{AUTH_ENV}=disabled turns Ray's token authentication off; unset it, or pass "
                         "--insecure-ray-no-auth to run without it")


def loopback_grpc_ports() -> None:
    """Worker setup hook: gRPC servers that Ray code in this process opens on a wildcard address listen on
    127.0.0.1 instead (only ever installed in a one-machine cluster, whose node address is 127.0.0.1)."""
    from ray._common import tls_utils

    add_port = tls_utils.add_port_to_grpc_server
    if getattr(add_port, "loopback", False):
        return

    def add_loopback_port(server, address: str):
        host, _, port = address.rpartition(":")
        if host in ("[::]", "0.0.0.0", ""):
            address = f"{LOOPBACK}:{port}"
        return add_port(server, address)

    add_loopback_port.loopback = True
    tls_utils.add_port_to_grpc_server = add_loopback_port


def init_local_ray(allow_no_auth: bool = False, **init_kwargs):
    """`ray.init` of a new one-machine cluster on loopback (kwargs: num_cpus, include_dashboard, ...)."""
    check_auth(allow_no_auth)
    os.environ[SINGLE_MACHINE_ENV] = "0"
    import ray
    from ray._private import ray_constants

    # Read when Ray was imported: set here too in case this process imported Ray before (tests do).
    ray_constants.ENABLE_RAY_CLUSTER = False
    init_kwargs.setdefault("include_dashboard", False)
    runtime_env = {**init_kwargs.pop("runtime_env", {}),
                   "worker_process_setup_hook": f"{__name__}.{loopback_grpc_ports.__name__}"}
    return ray.init(address="local", _node_ip_address=LOOPBACK, runtime_env=runtime_env, **init_kwargs)
