"""Operator start and stop: settings, the API client, the metrics endpoint."""

from __future__ import annotations

import kopf

from .. import metrics
from ..config import OperatorConfig
from ..kube import Kube, connection_info


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger, **_):
    # kopf keeps its bookkeeping in annotations, leaving .status to the resources' own fields
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="polyvivid.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="polyvivid.io")
    settings.persistence.finalizer = "polyvivid.io/operator"
    settings.posting.level = 20  # INFO and up become Kubernetes Events
    settings.watching.server_timeout = 300
    memo.config = OperatorConfig.from_env()
    memo.locks = {}  # (kind, namespace, name) -> asyncio.Lock: one reconcile at a time per resource
    memo.kube = Kube.from_environment(settings, logger)
    metrics.reset()
    memo.metrics_server = metrics.serve(memo.config.metrics_port) if memo.config.metrics_port else None
    logger.info(f"polyvivid operator: image {memo.config.image}, metrics port {memo.config.metrics_port or 'off'}, "
                f"object stores {', '.join(memo.config.endpoints()) or 'none configured'}")


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_):
    if getattr(memo, "kube", None):
        await memo.kube.close()
    if getattr(memo, "metrics_server", None):
        memo.metrics_server.shutdown()
        memo.metrics_server.server_close()


@kopf.on.login()
def login(settings: kopf.OperatorSettings, logger, **_):
    """The same credentials the operator's own client uses (kube.connection_info)."""
    return connection_info(settings, logger)
