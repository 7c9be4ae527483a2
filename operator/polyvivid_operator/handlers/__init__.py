"""kopf handlers, one module per kind; importing this package registers them with kopf."""

from . import curation, lifecycle, service, training  # noqa: F401
