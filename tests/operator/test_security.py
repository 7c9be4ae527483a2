"""The operator's security rules, as pure functions (validation, renderers, `polyvivid render`) and
through the real operator:
- every artifact URI of every kind is s3://bucket/... in the cluster, and the operator reads nothing else;
- a spec may name only the object stores the operator is configured with (compared normalised), and the
  pods of a spec that names none point at the configured one;
- children of 63-character parents get names their controllers accept, distinct for distinct parents;
- a service needs an API token Secret, or says allowUnauthenticated.
A Secret the operator may not read (rbac.secretNamespaces, 403) is in tests/charts/test_rbac.py."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
import yaml
from polyvivid_operator.artifacts import read_json
from polyvivid_operator.children.common import NAME_LIMITS, child_name
from polyvivid_operator.config import OperatorConfig, normalized_endpoint
from polyvivid_operator.render import render
from polyvivid_operator.validation import InvalidSpec, checked_spec

from polyvivid.api.common import StorageSpec
from polyvivid.storage import open_store

from ..kube.client import wait_for
from ..openapi import upstream_errors
from ..test_cli import polyvivid
from .conftest import running_operator
from .test_curation_and_service_reconcile import curation_manifest, service_manifest
from .test_training_reconcile import ready, training_manifest

CONFIG = OperatorConfig(s3_endpoint="http://minio.minio:9000", allowed_s3_endpoints=("https://s3.eu.example",))
NOT_S3 = ["file:///etc", "/etc/polyvivid", "out/run", "http://attacker.example/data", "https://s3.example/b/k",
          "ftp://host/x", "s3://", "s3:/bucket/x"]
EVAL_MODELS = ["clipB", "clipL", "dinov2", "grounding", "sam2", "faceDetector", "faceEmbedder", "i3D"]  # the CRD's names


def owned(manifest: dict) -> dict:
    return {**manifest, "metadata": {**manifest["metadata"], "uid": "u-1"}}


def every_uri_training() -> dict:
    return training_manifest("s3://runs/t", model={"hunyuanvideo": "s3://models/hv", "llava": "s3://models/llava"},
                             evaluation={"cases": "s3://eval/cases.jsonl", "realVideos": "s3://eval/real",
                                         "metrics": ["clip-b"], "models": {m: f"s3://models/{m}" for m in EVAL_MODELS}})


def every_uri_curation() -> dict:
    def ref(name):
        return {"uri": f"s3://models/{name}"}

    return curation_manifest("s3://datasets/c", caption={"model": ref("c")}, grounding={"model": ref("g")},
                             segmentation={"model": ref("s")}, clipScore={"model": ref("clip")},
                             filters={"subtitleDetector": ref("sub"), "watermarkDetector": ref("wm"),
                                      "qualityScorer": ref("q")})


def every_uri_service() -> dict:
    return service_manifest(model={"uri": "s3://runs/t/final", "baseModel": "s3://models/base"})


URI_FIELDS = {
    "PolyVividTraining": (every_uri_training, ["spec.output", "spec.dataset.uri", "spec.model.hunyuanvideo",
                                               "spec.model.llava", "spec.evaluation.cases", "spec.evaluation.realVideos",
                                               *(f"spec.evaluation.models.{m}" for m in EVAL_MODELS)]),
    "CurationJob": (every_uri_curation, ["spec.input", "spec.output", "spec.caption.model.uri",
                                         "spec.grounding.model.uri", "spec.segmentation.model.uri",
                                         "spec.clipScore.model.uri", "spec.filters.subtitleDetector.uri",
                                         "spec.filters.watermarkDetector.uri", "spec.filters.qualityScorer.uri"]),
    "PolyVividService": (every_uri_service, ["spec.output", "spec.model.uri", "spec.model.baseModel"]),
}


def with_value(manifest: dict, field: str, value) -> dict:
    node = manifest
    *parents, last = field.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    return manifest


@pytest.mark.parametrize("kind, field", [(k, f) for k, (_, fields) in URI_FIELDS.items() for f in fields])
def test_every_artifact_uri_must_be_s3(kind, field):
    make, _ = URI_FIELDS[kind]
    checked_spec(owned(make()), CONFIG)  # s3:// everywhere: accepted
    for uri in NOT_S3:
        with pytest.raises(InvalidSpec) as e:
            checked_spec(owned(with_value(make(), field, uri)), CONFIG)
        assert str(e.value) == f"{field}: {uri!r} is not an s3:// URI; in the cluster artifacts live in the object store"


def test_presets_need_no_uri():
    for manifest in (training_manifest("s3://runs/t"), curation_manifest("s3://d/c"), service_manifest()):
        checked_spec(owned(manifest), CONFIG)  # tiny presets (training, curation's default models, service)


def test_read_json_refuses_anything_but_s3_itself(tmp_path):
    (tmp_path / "progress.json").write_text(json.dumps({"step": 1}))
    assert json.loads(open_store(str(tmp_path)).read_text("progress.json")) == {"step": 1}  # readable, if one asked
    storage = StorageSpec(endpoint="http://127.0.0.1:9")
    for uri in (f"file://{tmp_path}", str(tmp_path), "http://127.0.0.1:9/bucket"):
        document, why = asyncio.run(read_json(None, "ml", storage, uri, "progress.json"))
        assert document is None and f"{uri!r} is not an s3:// URI" in why, why
    document, why = asyncio.run(read_json(None, "ml", StorageSpec(), "s3://bucket/run", "progress.json"))
    assert document is None and "no S3 endpoint" in why


@pytest.mark.parametrize("endpoint, normal", [
    ("http://minio.minio:9000", "http://minio.minio:9000"), ("HTTP://MinIO.minio:9000/", "http://minio.minio:9000"),
    ("http://minio.minio", "http://minio.minio:80"), ("https://s3.example", "https://s3.example:443"),
    ("minio:9000", "https://minio:9000"),  # as the store client reads a bare host:port
])
def test_endpoints_compare_by_scheme_host_and_port(endpoint, normal):
    assert normalized_endpoint(endpoint) == normal


@pytest.mark.parametrize("endpoint", ["http://minio:9000/bucket", "ftp://minio:21", "http://user:pw@minio:9000",
                                      "http://minio:9000?x=1", "http://minio:99999"])
def test_what_is_not_an_endpoint_is_refused(endpoint):
    with pytest.raises(ValueError, match="is not an S3 endpoint"):
        normalized_endpoint(endpoint)


@pytest.mark.parametrize("endpoint", ["http://minio.minio:9000", "http://MINIO.minio:9000/", "https://s3.eu.example",
                                      "https://s3.eu.example:443/"])
def test_a_spec_may_name_a_configured_endpoint(endpoint):
    checked_spec(owned(training_manifest("s3://runs/t", storage={"endpoint": endpoint})), CONFIG)


@pytest.mark.parametrize("endpoint", ["http://minio.minio:9001", "https://minio.minio:9000", "http://minio.minio.svc:9000",
                                      "http://attacker.example:9000", "http://minio.minio:9000/bucket", "minio.minio:9000"])
def test_any_other_endpoint_is_invalid_and_the_message_says_what_is_allowed(endpoint):
    for manifest in (training_manifest("s3://runs/t", storage={"endpoint": endpoint}),
                     curation_manifest("s3://d/c", storage={"endpoint": endpoint}),
                     service_manifest(storage={"endpoint": endpoint})):
        with pytest.raises(InvalidSpec) as e:
            checked_spec(owned(manifest), CONFIG)
        assert str(e.value).startswith(f"spec.storage.endpoint: {endpoint!r} is not an object store this operator "
                                       "may use (allowed: http://minio.minio:9000, https://s3.eu.example; leave it "
                                       "unset to use http://minio.minio:9000"), str(e.value)
    with pytest.raises(InvalidSpec, match=r"\(allowed: none configured;"):  # an operator without a store allows none
        checked_spec(owned(training_manifest("s3://runs/t", storage={"endpoint": endpoint})), OperatorConfig())


def test_the_configuration_comes_from_the_environment_and_a_bad_endpoint_fails_at_start(monkeypatch):
    monkeypatch.setenv("POLYVIVID_S3_ENDPOINT", "http://minio.minio:9000")
    monkeypatch.setenv("POLYVIVID_ALLOWED_S3_ENDPOINTS", "https://s3.eu.example, http://backup:9000,")
    config = OperatorConfig.from_env()
    assert config.s3_endpoint == "http://minio.minio:9000"
    assert config.allowed_s3_endpoints == ("https://s3.eu.example", "http://backup:9000")
    monkeypatch.setenv("POLYVIVID_ALLOWED_S3_ENDPOINTS", "http://backup:9000/bucket")
    with pytest.raises(ValueError, match="'http://backup:9000/bucket' is not an S3 endpoint"):
        OperatorConfig.from_env()


def pod_envs(child: dict) -> list[dict[str, str]]:
    """The env (name -> value or secret reference) of every container the child's pods run."""
    spec = child["spec"]
    if child["kind"] == "TrainJob":  # the trainer container's env is the TrainJob's
        return [{e["name"]: e.get("value", e.get("valueFrom")) for e in spec["trainer"]["env"]}]
    if child["kind"] == "PyTorchJob":
        templates = [r["template"] for r in spec["pytorchReplicaSpecs"].values()]
    else:
        cluster = spec.get("rayClusterSpec") or spec["rayClusterConfig"]
        templates = [g["template"] for g in (cluster["headGroupSpec"], *cluster["workerGroupSpecs"])]
    return [{e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
            for t in templates for c in t["spec"]["containers"]]


def test_pods_of_specs_naming_no_endpoint_use_the_configured_one():
    docs = [training_manifest("s3://runs/t", name="own", storage={"endpoint": "https://s3.eu.example"}),
            training_manifest("s3://runs/t", name="default"), curation_manifest("s3://d/c"), service_manifest()]
    children = {c["metadata"]["name"]: c for c in render(docs, "reg/pv:1", config=CONFIG) if c["kind"] != "ConfigMap"}
    assert set(children) == {"own-train", "default-train", "raw-curate", "demo"}
    for name, child in children.items():
        want = "https://s3.eu.example" if name == "own-train" else "http://minio.minio:9000"
        assert [env["POLYVIVID_S3_ENDPOINT"] for env in pod_envs(child)] == [want] * len(pod_envs(child)), name
    # without a configured store, the pods get none (as before; the chart always configures one)
    (job,) = [c for c in render(docs[1:2], "reg/pv:1", config=OperatorConfig()) if c["kind"] == "TrainJob"]
    assert all("POLYVIVID_S3_ENDPOINT" not in env for env in pod_envs(job))


DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# What the children's controllers accept (not in the upstream CRDs' schemas: checked by their code):
# KubeRay refuses RayJob and RayService names over 47 characters (MaxRayJobNameLength,
# MaxRayServiceNameLength) or not DNS-1035 labels; the training operator wants a DNS-1035 label and names
# each replica's Pod and Service NAME-worker-INDEX, at most 63 (up to 512 nodes: index 510); JobSet names a
# TrainJob's pods (and their hostnames) NAME-node-0-INDEX.
UPSTREAM_LIMITS = {"RayJob": 47, "RayService": 47, "PyTorchJob": 63 - len("-worker-510"),
                   "TrainJob": 63 - len("-node-0-511")}


def rendered(kind: str, name: str) -> list[dict]:
    manifest = {"PolyVividTraining": lambda: training_manifest("s3://runs/t", name=name, resources={"nodes": 512},
                                                               globalBatchSize=4096),
                "CurationJob": lambda: curation_manifest("s3://d/c", name=name),
                "PolyVividService": lambda: service_manifest(name=name)}[kind]()
    return render([manifest], "reg/pv:1", config=CONFIG)


@pytest.mark.parametrize("kind", list(URI_FIELDS))
def test_children_of_63_character_parents_are_valid_and_distinct(kind):
    first, second = "p" + "x" * 60 + "-a", "p" + "x" * 60 + "-b"  # differ only in the last character
    assert len(first) == len(second) == 63
    children, others = rendered(kind, first), rendered(kind, second)
    for child in children:
        name = child["metadata"]["name"]
        if child["kind"] == "ConfigMap":
            assert DNS_1123_SUBDOMAIN.match(name) and len(name) <= 253, name
            continue
        assert DNS_1035.match(name) and len(name) <= UPSTREAM_LIMITS[child["kind"]], name
        assert upstream_errors(child) == [], child["kind"]
        if child["kind"] == "RayService":  # KubeRay's Service for Serve, which status.endpoint names
            from polyvivid_operator.children.rayservice import endpoint

            serve_service = f"{name}-serve-svc"
            assert DNS_1035.match(serve_service) and len(serve_service) <= 63
            assert endpoint(owned(service_manifest(name=first))) == f"http://{serve_service}.ml.svc:8000"
    names = [c["metadata"]["name"] for c in children]
    assert len(set(names)) == len(names)
    assert not set(names) & {c["metadata"]["name"] for c in others}  # two long parents never collide
    assert names == [c["metadata"]["name"] for c in rendered(kind, first)]  # stable: the same name every reconcile
    # the pods mount the spec ConfigMap rendered beside the job, under its (possibly cut) name
    mounted = {v["configMap"]["name"] for c in children if c["kind"] != "ConfigMap" for v in _volumes(c)
               if "configMap" in v}
    assert mounted == {c["metadata"]["name"] for c in children if c["kind"] == "ConfigMap"}


def _volumes(child: dict) -> list[dict]:
    spec = child["spec"]
    if child["kind"] == "TrainJob":  # patched into the runtime's pods
        return [v for patch in spec["runtimePatches"] for job in patch["trainingRuntimeSpec"]["template"]["spec"]
                ["replicatedJobs"] for v in job["template"]["spec"]["template"]["spec"]["volumes"]]
    if child["kind"] == "PyTorchJob":
        return [v for r in spec["pytorchReplicaSpecs"].values() for v in r["template"]["spec"]["volumes"]]
    cluster = spec.get("rayClusterSpec") or spec["rayClusterConfig"]
    return [v for g in (cluster["headGroupSpec"], *cluster["workerGroupSpecs"]) for v in g["template"]["spec"]["volumes"]]


def test_names_within_the_limit_are_kept_and_longer_ones_are_cut_with_a_hash():
    def owner(name):
        return {"metadata": {"name": name}}

    assert child_name(owner("demo"), "-train", "PyTorchJob") == "demo-train"
    at_limit = "s" * NAME_LIMITS["RayService"]
    assert child_name(owner(at_limit), "", "RayService") == at_limit
    cut = child_name(owner(at_limit + "x"), "", "RayService")
    assert len(cut) == NAME_LIMITS["RayService"] and cut.startswith("s" * 38 + "-") and cut != at_limit
    long_job = child_name(owner("t" * 63), "-curate", "RayJob")
    assert len(long_job) == 47 and long_job.endswith("-curate") and re.fullmatch(r"t{31}-[0-9a-f]{8}-curate", long_job)


def test_a_name_must_start_with_a_letter():
    with pytest.raises(InvalidSpec, match=r"^metadata.name: '1st' must start with a letter"):
        checked_spec(owned(training_manifest("s3://runs/t", name="1st")), CONFIG)


def test_a_service_needs_a_token_secret_or_says_it_runs_open():
    with pytest.raises(InvalidSpec) as e:
        checked_spec(owned(service_manifest(allowUnauthenticated=False)), CONFIG)
    assert str(e.value) == ("spec.apiTokenSecretRef: a service in the cluster needs an API token: create a Secret "
                            "holding one and set spec.apiTokenSecretRef to it, or set spec.allowUnauthenticated: true "
                            "to let anyone who reaches the service use it")
    checked_spec(owned(service_manifest(apiTokenSecretRef={"name": "token"})), CONFIG)
    checked_spec(owned(service_manifest(allowUnauthenticated=True)), CONFIG)


def test_polyvivid_render_applies_the_same_rules(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(training_manifest("file:///etc", name="x")))
    result = polyvivid("render", str(bad))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "PolyVividTraining/x: spec.output: 'file:///etc' is not an s3:// URI" in result.stderr


def test_the_operator_enforces_the_rules_and_points_pods_at_its_object_store(kube, apiserver, monkeypatch):
    monkeypatch.setenv("POLYVIVID_S3_ENDPOINT", "http://minio.minio:9000")
    monkeypatch.setenv("POLYVIVID_ALLOWED_S3_ENDPOINTS", "https://s3.eu.example,http://backup.minio:9000")
    invalid = {
        ("PolyVividTraining", "etc"): (training_manifest("file:///etc", name="etc"),
                                       "spec.output: 'file:///etc' is not an s3:// URI"),
        ("CurationJob", "web"): (curation_manifest("s3://d/c", name="web", input="https://videos.example/raw/"),
                                 "spec.input: 'https://videos.example/raw/' is not an s3:// URI"),
        ("PolyVividService", "local"): (service_manifest(name="local", model={"uri": "/models/pv"}),
                                        "spec.model.uri: '/models/pv' is not an s3:// URI"),
        ("PolyVividTraining", "elsewhere"): (
            training_manifest("s3://runs/e", name="elsewhere", storage={"endpoint": "http://attacker.example:9000"}),
            "spec.storage.endpoint: 'http://attacker.example:9000' is not an object store this operator may use "
            "(allowed: http://minio.minio:9000, https://s3.eu.example, http://backup.minio:9000"),
        ("PolyVividService", "open"): (service_manifest(name="open", allowUnauthenticated=False),
                                       "spec.apiTokenSecretRef: a service in the cluster needs an API token"),
    }
    long_training, long_service = "t" + "x" * 61 + "1", "s" + "x" * 61 + "1"
    valid = [training_manifest("s3://runs/p", name="plain"),
             training_manifest("s3://runs/eu", name="eu", storage={"endpoint": "https://S3.eu.example:443/"}),
             curation_manifest("s3://d/c", name="cur"),
             training_manifest("s3://runs/l", name=long_training), service_manifest(name=long_service)]
    with running_operator(monkeypatch):
        for manifest, _ in invalid.values():
            kube.create(manifest)
        for manifest in valid:
            kube.create(manifest)
        for (kind, name), (_, message) in invalid.items():
            obj = wait_for(lambda: (o := kube.get(kind, name)) and ready(o).get("reason") and o, what=name)
            assert obj["status"]["phase"] == "Invalid" and ready(obj)["reason"] == "InvalidSpec", name
            assert ready(obj)["message"].startswith(message), ready(obj)["message"]

        plain = wait_for(lambda: kube.get("TrainJob", "plain-train"), what="the plain training's job")
        assert {env["POLYVIVID_S3_ENDPOINT"] for env in pod_envs(plain)} == {"http://minio.minio:9000"}
        eu = wait_for(lambda: kube.get("TrainJob", "eu-train"), what="the training on the allowed store")
        assert {env["POLYVIVID_S3_ENDPOINT"] for env in pod_envs(eu)} == {"https://S3.eu.example:443/"}
        curation = wait_for(lambda: kube.get("RayJob", "cur-curate"), what="the curation's RayJob")
        assert {env["POLYVIVID_S3_ENDPOINT"] for env in pod_envs(curation)} == {"http://minio.minio:9000"}

        training = wait_for(lambda: (t := kube.get("PolyVividTraining", long_training)) and ready(t).get("reason") and t)
        job_name = training["status"]["trainJob"]
        assert len(job_name) <= UPSTREAM_LIMITS["TrainJob"] and kube.get("TrainJob", job_name)
        service = wait_for(lambda: (s := kube.get("PolyVividService", long_service)) and ready(s).get("reason") and s)
        rayservice = service["status"]["rayService"]
        assert len(rayservice) <= UPSTREAM_LIMITS["RayService"] and kube.get("RayService", rayservice)
        assert service["status"]["endpoint"] == f"http://{rayservice}-serve-svc.ml.svc:8000"
        made = {c["metadata"]["name"] for kind in ("TrainJob", "PyTorchJob", "RayJob", "RayService")
                for c in kube.list(kind)}
        assert made == {"plain-train", "eu-train", "cur-curate", job_name, rayservice}  # none for the invalid ones
