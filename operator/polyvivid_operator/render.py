"""`polyvivid render`: the children the operator would create for manifests, through the same
renderers and checks, without a cluster. References between resources (a training's CurationJob, a
service's PolyVividTraining) resolve against the other documents given, as the operator resolves them
once the referenced resource succeeded."""

from __future__ import annotations

import dataclasses

from .children import pytorchjob, rayjob, rayservice
from .config import OperatorConfig
from .validation import CHECKS, InvalidSpec, checked_spec

PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"  # the API server assigns the real one


def render(docs: list[dict], image: str, max_gpus_per_node: int = 8, namespace: str = "default",
           config: OperatorConfig | None = None) -> list[dict]:
    """Children of every PolyVivid resource in docs (other kinds are skipped); InvalidSpec names the
    resource and the problem. The object store settings (POLYVIVID_S3_ENDPOINT,
    POLYVIVID_ALLOWED_S3_ENDPOINTS) come from `config`, else from the environment, as the operator reads them."""
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
        if kind not in CHECKS:
            continue
        if not isinstance(doc.get("metadata"), dict):
            raise InvalidSpec(f"{kind}: metadata: a mapping with the resource's name is required")
        owner = {**doc, "metadata": {**doc["metadata"], "namespace": doc["metadata"].get("namespace") or namespace,
                                     "uid": PLACEHOLDER_UID}}
        try:
            children += _render_one(kind, owner, named, config)
        except InvalidSpec as e:
            raise InvalidSpec(f"{kind}/{name}: {e}") from None
    return children


def _referenced(named: dict, kind: str, name: str, field: str, meanwhile: str) -> dict:
    doc = named.get((kind, name))
    if doc is None:
        raise InvalidSpec(f"{field}: {kind} {name!r} is not in the files given (the operator would {meanwhile})")
    return doc


def _render_one(kind: str, owner: dict, named: dict, config: OperatorConfig) -> list[dict]:
    spec = checked_spec(owner, config)
    image, s3_endpoint = config.image, config.s3_endpoint
    if kind == "PolyVividTraining":
        dataset_uri = None
        if spec.dataset.curation_job:
            curation = _referenced(named, "CurationJob", spec.dataset.curation_job, "spec.dataset.curationJob",
                                   "wait for it")
            dataset_uri = curation["spec"]["output"]
        return [pytorchjob.render_configmap(owner),
                pytorchjob.render_pytorchjob(owner, image, dataset_uri, s3_endpoint)]
    if kind == "CurationJob":
        return [rayjob.render_configmap(owner), rayjob.render_rayjob(owner, image, s3_endpoint)]
    model_uri = None
    if spec.model.training:
        training = _referenced(named, "PolyVividTraining", spec.model.training, "spec.model.training",
                               "serve its final weights once it succeeded")
        model_uri = f"{training['spec']['output'].rstrip('/')}/final"
    return [rayservice.render_rayservice(owner, image, model_uri, s3_endpoint=s3_endpoint)]
