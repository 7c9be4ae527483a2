"""`polyvivid render`: the children the operator would create for manifests, through the same
renderers and checks, without a cluster. References between resources (a training's CurationJob, a
service's PolyVividTraining) resolve against the other documents given, as the operator resolves them
once the referenced resource succeeded."""

from __future__ import annotations

from polyvivid.api import CurationJob, PolyVividService, PolyVividTraining

from .children import pytorchjob, rayjob, rayservice
from .validation import InvalidSpec, check_curation, check_service, check_training, validated

PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"  # the API server assigns the real one


def render(docs: list[dict], image: str, max_gpus_per_node: int = 8, namespace: str = "default") -> list[dict]:
    """Children of every PolyVivid resource in docs (other kinds are skipped); InvalidSpec names the
    resource and the problem."""
    named = {(d.get("kind"), (d.get("metadata") or {}).get("name")): d for d in docs}
    children: list[dict] = []
    for doc in docs:
        kind, name = doc.get("kind"), (doc.get("metadata") or {}).get("name")
        if kind not in ("PolyVividTraining", "CurationJob", "PolyVividService"):
            continue
        owner = {**doc, "metadata": {**doc["metadata"], "namespace": doc["metadata"].get("namespace") or namespace,
                                     "uid": PLACEHOLDER_UID}}
        try:
            children += _render_one(kind, owner, named, image, max_gpus_per_node)
        except InvalidSpec as e:
            raise InvalidSpec(f"{kind}/{name}: {e}") from None
    return children


def _render_one(kind: str, owner: dict, named: dict, image: str, max_gpus: int) -> list[dict]:
    if kind == "PolyVividTraining":
        spec = validated(PolyVividTraining, owner)
        check_training(spec, max_gpus)
        dataset_uri = None
        if spec.dataset.curation_job:
            curation = named.get(("CurationJob", spec.dataset.curation_job))
            if curation is None:
                raise InvalidSpec(f"spec.dataset.curationJob: CurationJob {spec.dataset.curation_job!r} is not in "
                                  "the files given (the operator would wait for it)")
            dataset_uri = curation["spec"]["output"]
        return [pytorchjob.render_configmap(owner), pytorchjob.render_pytorchjob(owner, image, dataset_uri)]
    if kind == "CurationJob":
        check_curation(validated(CurationJob, owner), max_gpus)
        return [rayjob.render_configmap(owner), rayjob.render_rayjob(owner, image)]
    spec = validated(PolyVividService, owner)
    check_service(spec, max_gpus)
    model_uri = None
    if spec.model.training:
        training = named.get(("PolyVividTraining", spec.model.training))
        if training is None:
            raise InvalidSpec(f"spec.model.training: PolyVividTraining {spec.model.training!r} is not in the files "
                              "given (the operator would serve its final weights once it succeeded)")
        model_uri = f"{training['spec']['output'].rstrip('/')}/final"
    return [rayservice.render_rayservice(owner, image, model_uri)]
