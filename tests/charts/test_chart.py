"""charts/polyvivid-operator: renders with default and non-default values, lints clean, every object
passes kubernetes-validate --strict for its kind, CRDs equal manifests/crds, install.yaml equals the
default render, the Deployment is restricted, RBAC is least-privilege, bad values are refused."""

from __future__ import annotations

import json

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from polyvivid_operator.config import OperatorConfig
from polyvivid_operator.main import build_parser

from .conftest import CHART, EVERYTHING, ROOT, only, render, render_install

K8S_VERSION = "1.37.0"
PROMETHEUS_OPERATOR_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
KOPF_KINDS = {"KopfPeering", "ClusterKopfPeering"}


@pytest.mark.parametrize("values", [None, EVERYTHING], ids=["defaults", "everything-on"])
def test_every_object_validates_strictly_for_its_kind(values):
    objs = render(values)
    kinds = {o["kind"] for o in objs}
    assert {"CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service",
            "Deployment"} <= kinds
    for obj in objs:
        if obj["kind"] in PROMETHEUS_OPERATOR_KINDS | KOPF_KINDS | {"ClusterTrainingRuntime"}:
            # custom kinds: kubernetes-validate has no schema for them (checked field by field below; the
            # ClusterTrainingRuntime against its upstream CRD in tests/operator/test_trainjob.py)
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)  # raises ValidationError with the path


def test_strict_validation_catches_a_misspelt_field():
    """The check above can fail: an unknown field in the Deployment is refused."""
    deployment = only(render(), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("values", [None, EVERYTHING], ids=["defaults", "everything-on"])
def test_lint_is_clean(values):
    report = helm.lint(CHART, values, strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    # severity 1 is information ("icon is recommended"); 2 warning, 3 error
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_chart_crds_equal_manifests_crds():
    chart = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    manifests = sorted(p.name for p in (ROOT / "manifests" / "crds").glob("*.yaml"))
    assert chart == manifests and len(chart) == 3
    for name in chart:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "manifests" / "crds" / name).read_bytes(), \
            f"{name}: run `make manifests`"


def test_install_yaml_is_the_default_render():
    assert (ROOT / "manifests" / "install.yaml").read_text() == render_install.install_manifest(), \
        "manifests/install.yaml is stale: run `make manifests`"
    docs = list(yaml.safe_load_all((ROOT / "manifests" / "install.yaml").read_text()))
    assert docs[0]["kind"] == "Namespace" and docs[1:] == render()
    kubernetes_validate.validate(docs[0], K8S_VERSION, strict=True)


def test_the_deployment_runs_restricted_and_non_root():
    deployment = only(render(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # no secret material in the spec: every env var is a plain setting
    assert all(not any(word in e["name"].upper() for word in ("KEY", "SECRET", "TOKEN", "PASSWORD"))
               for e in container["env"])
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"


@pytest.mark.parametrize("values", [None, EVERYTHING], ids=["defaults", "everything-on"])
def test_the_deployment_arguments_and_environment_are_what_the_operator_reads(values, monkeypatch):
    objs = render(values)
    container = only(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    args = build_parser().parse_args(container["args"])  # the operator's own parser accepts them
    assert args.namespace == (values or {}).get("watchNamespaces", [])
    assert args.peering == ((values or {}).get("peering", {}).get("name") if values else None)
    env = {e["name"]: e["value"] for e in container["env"]}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = OperatorConfig.from_env()
    workload = (values or {}).get("workloadImage", {"repository": "ghcr.io/polyvivid/polyvivid", "tag": "0.1.0"})
    assert config.image == f"{workload['repository']}:{workload['tag']}"
    store = (values or {}).get("objectStore", {"endpoint": "http://minio.minio:9000", "allowedEndpoints": []})
    assert config.s3_endpoint == store["endpoint"] and list(config.allowed_s3_endpoints) == store["allowedEndpoints"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert config.metrics_port == ports["metrics"]
    assert container["livenessProbe"]["httpGet"]["port"] == "health"
    assert args.liveness.endswith(f":{ports['health']}/healthz")
    service = only(objs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"].items() <= only(objs, "Deployment")["spec"]["template"]["metadata"]["labels"].items()


def rules_of(objs: list[dict]) -> list[dict]:
    return [r for o in objs if o["kind"] in ("ClusterRole", "Role") for r in o["rules"]]


def test_rbac_has_no_wildcards_and_secrets_are_read_only():
    for values in (None, EVERYTHING):
        rules = rules_of(render(values))
        assert rules
        for rule in rules:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"], rule
            if "secrets" in rule["resources"]:
                assert rule["verbs"] == ["get"]
            assert "deletecollection" not in rule["verbs"], rule
            if "delete" in rule["verbs"]:  # only what the operator itself made: a replaced or expired child
                assert set(rule["resources"]) <= {"trainjobs", "pytorchjobs", "rayjobs", "configmaps"}, rule


def test_watched_namespaces_get_roles_and_the_cluster_role_shrinks():
    objs = render({"watchNamespaces": ["ml", "research"]})
    roles = [o for o in objs if o["kind"] == "Role"]
    bindings = [o for o in objs if o["kind"] == "RoleBinding"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml", "research"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["ml", "research"]
    cluster = only(objs, "ClusterRole")
    assert {g for r in cluster["rules"] for g in r["apiGroups"]} == {"apiextensions.k8s.io", ""}
    assert {res for r in cluster["rules"] for res in r["resources"]} == {"customresourcedefinitions", "namespaces"}
    sa = only(objs, "ServiceAccount")
    for binding in bindings + [only(objs, "ClusterRoleBinding")]:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                        "namespace": "polyvivid-system"}]


def test_secret_namespaces_move_secrets_out_of_the_cluster_role_into_roles():
    for watch in ([], ["ml", "research"]):
        objs = render({"watchNamespaces": watch, "rbac": {"secretNamespaces": ["ml", "vault"]}})
        roles = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objs if o["kind"] == "Role"}
        with_secrets = sorted(key for key, role in roles.items() if any("secrets" in r["resources"] for r in role["rules"]))
        assert with_secrets == [("ml", "polyvivid-operator-secrets"), ("vault", "polyvivid-operator-secrets")]
        for ns in ("ml", "vault"):
            assert roles[(ns, "polyvivid-operator-secrets")]["rules"] == [
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
        assert not any("secrets" in r["resources"] for r in only(objs, "ClusterRole")["rules"])
        bindings = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objs if o["kind"] == "RoleBinding"}
        for ns in ("ml", "vault"):
            binding = bindings[(ns, "polyvivid-operator-secrets")]
            assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                          "name": "polyvivid-operator-secrets"}
            assert binding["subjects"][0]["name"] == only(objs, "ServiceAccount")["metadata"]["name"]
    # without the switch: Secrets in the ClusterRole (all namespaces), no Secret Roles
    default = render()
    assert any("secrets" in r["resources"] for r in only(default, "ClusterRole")["rules"])
    assert [o for o in default if o["kind"] == "Role"] == []


def test_monitoring_objects_select_what_they_should():
    objs = render(EVERYTHING)
    monitor = only(objs, "ServiceMonitor")
    service = only(objs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True  # the resources' namespace label survives
    assert monitor["metadata"]["labels"]["release"] == "kps"
    rule = only(objs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    dashboard = only(objs, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["polyvivid.json"]) == json.loads((CHART / "files" / "dashboard.json").read_text())
    peerings = [o for o in objs if o["kind"] == "KopfPeering"]
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["ml", "research"]
    assert {p["metadata"]["name"] for p in peerings} == {"polyvivid"}


def test_the_podmonitors_select_the_workload_pods_the_operator_creates():
    """The PodMonitor selectors match the pod labels of rendered children (plus the label the training
    operator and KubeRay add to their pods), and the scraped port exists on those pods."""
    from polyvivid_operator.render import render as render_children

    chart = render(EVERYTHING)
    monitors = {o["metadata"]["name"].rsplit("-", 1)[1]: o for o in chart if o["kind"] == "PodMonitor"}
    assert set(monitors) == {"training", "trainjob", "ray"}
    (runtime,) = [o for o in chart if o["kind"] == "ClusterTrainingRuntime"]
    (runtime_container,) = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"][
        "spec"]["containers"]
    docs = [d for path in sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
            for d in yaml.safe_load_all(path.read_text()) if d]
    children = render_children(docs, image="registry.test/polyvivid:ci")
    metrics_on = {d["metadata"]["name"]: d["spec"].get("metricsPort", 9090) != 0 for d in docs
                  if d["kind"] == "PolyVividTraining"}
    assert not all(metrics_on.values()) and any(metrics_on.values())  # both cases are covered

    def pods(kind):
        for child in children:
            if child["kind"] != kind:
                continue
            if kind == "TrainJob":  # the runtime's pods, with the TrainJob's patch; JobSet adds the index
                (job,) = child["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
                yield {**job["template"]["spec"]["template"]["metadata"]["labels"],
                       "batch.kubernetes.io/job-completion-index": "0"}, runtime_container
            elif kind == "PyTorchJob":
                # the training operator labels each pod with its replica type
                yield {**child["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["metadata"]["labels"],
                       "training.kubeflow.org/replica-type": "master"}, \
                    child["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
            else:
                cluster = child["spec"].get("rayClusterSpec") or child["spec"]["rayClusterConfig"]
                for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
                    yield {**group["template"]["metadata"]["labels"], "ray.io/node-type": "worker"}, \
                        group["template"]["spec"]["containers"][0]

    def selects(monitor, labels):
        selector = monitor["spec"]["selector"]
        ok = selector["matchLabels"].items() <= labels.items()
        for expr in selector.get("matchExpressions", []):
            ok &= (expr["key"] in labels) if expr["operator"] == "Exists" else labels.get(expr["key"]) in expr["values"]
        return ok

    backend_pytorchjob = [{**d, "metadata": {**d["metadata"], "name": d["metadata"]["name"] + "-v1"},
                           "spec": {**d["spec"], "backend": "pytorchjob"}} for d in docs if d["kind"] == "PolyVividTraining"]
    others = [d for d in docs if d["kind"] == "CurationJob"]  # what the trainings name
    children += [c for c in render_children(backend_pytorchjob + others, image="registry.test/polyvivid:ci")
                 if c["kind"] == "PyTorchJob"]
    metrics_on.update({d["metadata"]["name"]: metrics_on[d["metadata"]["name"][:-3]] for d in backend_pytorchjob})
    for component, kinds in (("training", ["PyTorchJob"]), ("trainjob", ["TrainJob"]), ("ray", ["RayJob", "RayService"])):
        found = [(labels, c) for kind in kinds for labels, c in pods(kind)]
        assert found, kinds
        port = monitors[component]["spec"]["podMetricsEndpoints"][0]["port"]
        for labels, container in found:
            assert selects(monitors[component], labels), (component, labels)
            if component in ("training", "trainjob") and not metrics_on[labels["app.kubernetes.io/instance"]]:
                continue  # the spec turned metrics off (demo-training.yaml: metricsPort 0)
            assert port in {p["name"] for p in container.get("ports", [])}, (component, container["name"])
    # and none selects another's pods
    for component, kinds in (("training", ["TrainJob", "RayJob", "RayService"]), ("trainjob", ["PyTorchJob", "RayJob", "RayService"]),
                             ("ray", ["TrainJob", "PyTorchJob"])):
        assert not any(selects(monitors[component], labels) for kind in kinds for labels, _ in pods(kind)), component


@pytest.mark.parametrize("values, message", [
    ({"replicaCount": 2}, "needs peering.enabled"),
    ({"watchNamespaces": ["Not_A_Namespace"]}, "does not match pattern"),
    ({"metrics": {"port": "8080"}}, "want integer"),
    ({"imagee": {"repository": "x"}}, "additional properties 'imagee' not allowed"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"objectStore": {"endpoint": "minio.minio:9000"}}, "/objectStore/endpoint"),
    ({"objectStore": {"endpoint": "http://minio.minio:9000/bucket"}}, "/objectStore/endpoint"),
    ({"objectStore": {"allowedEndpoints": ["ftp://s3.example"]}}, "/objectStore/allowedEndpoints/0"),
    ({"rbac": {"secretNamespaces": ["Bad_NS"]}}, "/rbac/secretNamespaces/0"),
])
def test_bad_values_are_refused_with_the_reason(values, message):
    with pytest.raises(helm.HelmError) as e:
        render(values)
    assert message in str(e.value)


def test_notes_say_how_to_check_the_install():
    rendered = helm.Chart.load(CHART).render(None, name="polyvivid-operator", namespace="polyvivid-system")
    notes = rendered["polyvivid-operator/templates/NOTES.txt"]
    assert "kubectl -n polyvivid-system rollout status deployment/polyvivid-operator" in notes
    assert "trainjobs.trainer.kubeflow.org" in notes and "rayservices.ray.io" in notes
    assert "kubectl get clustertrainingruntime polyvivid-torch" in notes and "pytorchjobs.kubeflow.org" in notes


def test_the_peering_crds_define_the_kinds_the_chart_creates():
    crds = list(yaml.safe_load_all((ROOT / "manifests" / "kopf-peering-crds.yaml").read_text()))
    for crd in crds:
        kubernetes_validate.validate(crd, K8S_VERSION, strict=True)
    defined = {(c["spec"]["group"], c["spec"]["names"]["kind"], c["spec"]["scope"]) for c in crds}
    cluster_wide = only(render({"replicaCount": 2, "peering": {"enabled": True}}), "ClusterKopfPeering")
    assert ("kopf.dev", "ClusterKopfPeering", "Cluster") in defined and "namespace" not in cluster_wide["metadata"]
    assert ("kopf.dev", "KopfPeering", "Namespaced") in defined
    assert cluster_wide["apiVersion"] == "kopf.dev/v1"
