"""`polyvivid render`: the children the operator would create for manifests, through the same
renderers and checks, without a cluster. References between resources (a training's CurationJob, a
service's PolyVividTraining) resolve against the other documents given, as the operator resolves them
once the referenced resource succeeded."""

from __future__ import annotations

import dataclasses
from typing import Callable

from .config import OperatorConfig
from .kinds import KINDS, KindDescriptor, Output
from .validation import InvalidSpec, checked_spec, warnings

PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"  # the API server assigns the real one


def render(docs: list[dict], image: str, max_gpus_per_node: int = 8, namespace: str = "default",
           config: OperatorConfig | None = None, on_warning: Callable[[str], None] | None = None) -> list[dict]:
    """Children of every PolyVivid resource in docs (other kinds are skipped); InvalidSpec names the
    resource and the problem, on_warning gets what is valid but likely a mistake. The object store settings
    (POLYVIVID_S3_ENDPOINT, POLYVIVID_ALLOWED_S3_ENDPOINTS) come from `config`, else from the environment, as
    the operator reads them."""
    if config is None:
        try:
            config = OperatorConfig.from_env()
        except ValueError as e:
            raise InvalidSpec(f"the operator settings in the environment: {e}") from None
    config = dataclasses.replace(config, image=image, max_gpus_per_node=max_gpus_per_node)
    named = {(d.get("kind"), (d.get("metadata") or {}).get("name")): d for d in docs}
    children: list[dict] = []
    for doc in docs:
        kind, name = doc.get("kind"), (doc.get("metadata") or {}).get("name")
        if kind not in KINDS:
            continue
        if not isinstance(doc.get("metadata"), dict):
            raise InvalidSpec(f"{kind}: metadata: a mapping with the resource's name is required")
        owner = {**doc, "metadata": {**doc["metadata"], "namespace": doc["metadata"].get("namespace") or namespace,
                                     "uid": PLACEHOLDER_UID}}
        try:
            spec = checked_spec(owner, config)
            children += KINDS[kind].build_children(owner, _resolve(KINDS[kind], owner, named), config)
        except InvalidSpec as e:
            raise InvalidSpec(f"{kind}/{name}: {e}") from None
        for warning in warnings(kind, spec):
            if on_warning is not None:
                on_warning(f"{kind}/{name}: {warning}")
    return children


def _resolve(kind: KindDescriptor, owner: dict, named: dict) -> dict[str, Output]:
    """The outputs of the resources the spec names, by their kind: what the documents given will produce."""
    resolved = {}
    for dep in kind.dependencies:
        name = dep.target(owner)
        if name is None:
            continue
        doc = named.get((dep.kind, name))
        if doc is None:
            raise InvalidSpec(f"{dep.path}: {dep.kind} {name!r} is not in the files given "
                              f"(the operator would {dep.meanwhile})")
        resolved[dep.kind] = dep.planned(doc)
    return resolved
