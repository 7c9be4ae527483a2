"""The PolyVivid operator: `kopf run -m polyvivid_operator` (or `polyvivid-operator`).

children/ builds child objects from a resource (pure functions, also behind `polyvivid render`);
handlers/ reconciles each kind against the API server. Importing the package registers the handlers.
"""

from . import handlers  # noqa: F401
