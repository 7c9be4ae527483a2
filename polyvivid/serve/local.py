"""`polyvivid serve SPEC --local`: the same application a RayService runs, on this machine only.

Ray and Serve listen on 127.0.0.1; the process serves until SIGINT/SIGTERM, then shuts Serve and
Ray down.
"""

from __future__ import annotations

import os
import signal
import threading

from ..api.service import ServiceSpec


def serve_local(spec: ServiceSpec, model_ref: str | None, port: int, on_ready=print) -> None:
    # Ray 2.60 turns on token auth by default; a one-machine cluster on loopback opts out.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import serve

    from .app import build_app
    from .config import APP_NAME, serve_config_args

    args = serve_config_args(spec, model_ref)
    ray.init(address="local", include_dashboard=False, configure_logging=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own crash handlers
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(args), name=APP_NAME, route_prefix="/")
        on_ready(f"serving {args['model']} at http://127.0.0.1:{port} (API docs: http://127.0.0.1:{port}/docs); "
                 f"jobs in {spec.output}; Ctrl-C stops")
        metrics_port = ray.nodes()[0].get("MetricsExportPort")
        if metrics_port:
            on_ready(f"metrics: http://127.0.0.1:{metrics_port}/metrics")
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
