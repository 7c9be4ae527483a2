"""`polyvivid serve SPEC --local`: the same application a RayService runs, on this machine only.

Ray (every process of it: see polyvivid/ray_local.py) and Serve listen on 127.0.0.1; the process serves
until SIGINT/SIGTERM, then shuts Serve and Ray down.
"""

from __future__ import annotations

import signal
import threading

from ..api.service import ServiceSpec


def serve_local(spec: ServiceSpec, model_ref: str | None, port: int, on_ready=print,
                allow_ray_no_auth: bool = False) -> None:
    from ..ray_local import LOOPBACK, init_local_ray

    init_local_ray(allow_ray_no_auth, configure_logging=False, log_to_driver=False)
    import ray
    from ray import serve

    from .app import build_app
    from .config import APP_NAME, serve_config_args

    args = serve_config_args(spec, model_ref)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own crash handlers
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": LOOPBACK, "port": port})
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
