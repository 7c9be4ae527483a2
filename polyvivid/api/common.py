"""Pieces shared by every resource: metadata, storage settings, loading a manifest with clear errors."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

GROUP = "polyvivid.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


# The largest generation a request may ask for, wherever it comes from (CLI, HTTP, a service's limits):
# refused before any model loads. 257 frames and 2048 px are twice HunyuanVideo's 129 frames and 720p
# width; past them a request is a mistake or an attack, not a video.
MAX_FRAMES = 257
MAX_SIDE = 2048
MAX_STEPS = 1000
MAX_GUIDANCE = 30.0
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed


class SpecError(ValueError):
    """A manifest that does not validate; the message names the field (one line per problem)."""


class ApiModel(BaseModel):
    """camelCase on the wire (Kubernetes style), snake_case in Python; unknown fields are errors."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow")  # the API server adds uid, resourceVersion, ...

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class SecretRef(ApiModel):
    """A Kubernetes Secret holding S3 credentials; the values never appear in a spec."""

    name: str = Field(min_length=1)
    access_key_key: str = Field("AWS_ACCESS_KEY_ID", description="key of the access key id in the Secret")
    secret_key_key: str = Field("AWS_SECRET_ACCESS_KEY", description="key of the secret access key in the Secret")


class StorageSpec(ApiModel):
    endpoint: str | None = Field(None, description="S3 endpoint, e.g. http://minio.minio:9000 (default: from the environment)")
    region: str | None = None
    secret_ref: SecretRef | None = Field(None, description="Secret with the S3 credentials")
    verify_tls: bool = True

    def environment(self) -> dict[str, str]:
        """Environment variables (no secrets) that point the artifact store at this endpoint."""
        env = {}
        if self.endpoint:
            env["POLYVIVID_S3_ENDPOINT"] = self.endpoint
        if self.region:
            env["AWS_REGION"] = self.region
        if not self.verify_tls:
            env["POLYVIVID_S3_VERIFY_TLS"] = "0"
        return env


class Toleration(ApiModel):
    """A pod toleration (core/v1 Toleration), e.g. for tainted GPU nodes."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(None, ge=0)


QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"
_QUANTITY_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
                   "Ti": 2**40}


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity ("64Gi", "1.5T", "512") in bytes."""
    number = quantity.rstrip("KiMGTk")
    return int(float(number) * _QUANTITY_UNITS[quantity[len(number):]])


class EnvVar(ApiModel):
    """A container env var (core/v1 EnvVar): a value, or valueFrom (a secretKeyRef, configMapKeyRef, fieldRef
    or resourceFieldRef, passed as given)."""

    name: str = Field(min_length=1, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    value: str | None = None
    value_from: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_source(self):
        if self.value is not None and self.value_from is not None:
            raise ValueError(f"env {self.name}: give value or valueFrom, not both")
        return self


class Suspendable(ApiModel):
    """spec.suspend, which every kind has."""

    suspend: bool = Field(False, description="stop the workload and keep its state: a training checkpoints and its "
                          "pods stop, a curation's or a service's pods stop; false again resumes (a training from "
                          "its checkpoint). While suspended the child is out of Kueue's queue")


class Finite(ApiModel):
    """Deadline and cleanup of a kind that runs to an end (training, curation)."""

    active_deadline_seconds: int | None = Field(None, ge=1, description="stop the run after this many seconds "
                                                "running (the job's activeDeadlineSeconds): it fails with reason "
                                                "DeadlineExceeded")
    ttl_seconds_after_finished: int | None = Field(None, ge=0, description="once it succeeded or failed, delete its "
                                                   "children (the job and the spec ConfigMap) after this many "
                                                   "seconds; the resource and its status stay, and it is not run "
                                                   "again")


class SchedulingSpec(ApiModel):
    """Where and how the pods run; passed through to every pod the operator creates for the resource."""

    image: str | None = Field(None, description="container image (default: the operator's workload image)")
    node_selector: dict[str, str] = Field(default_factory=dict, description="nodeSelector of the pods")
    tolerations: list[Toleration] = Field(default_factory=list, description="tolerations of the pods")
    queue: str | None = Field(None, description="Kueue LocalQueue name (label kueue.x-k8s.io/queue-name): the "
                                                "job is created suspended, and Kueue starts it when the quota allows")
    workload_priority_class: str | None = Field(None, description="Kueue WorkloadPriorityClass (label "
                                                "kueue.x-k8s.io/priority-class): the order in which Kueue admits and "
                                                "preempts queued children; with queue")
    volcano_queue: str | None = Field(None, description="a Volcano queue, for PyTorchJobs on clusters that "
                                      "gang-schedule with Volcano (runPolicy.schedulingPolicy); not Kueue's")
    priority_class: str | None = Field(None, description="PriorityClass of the pods")
    image_pull_secrets: list[str] = Field(default_factory=list, description="names of Secrets the pods pull the "
                                          "image with (imagePullSecrets)")
    service_account_name: str | None = Field(None, description="the pods' ServiceAccount (default: the namespace's "
                                             "default), e.g. one bound to a cloud role for the object store")


class WorkerShape(ApiModel):
    """One pod of a Ray cluster's worker group (the head pod runs no GPU work)."""

    gpus: int = Field(1, ge=0, le=16, description="GPUs per worker pod; 0 makes CPU-only workers")
    cpus: int = Field(8, ge=1, le=512, description="CPU cores per worker pod")
    memory: str = Field("64Gi", pattern=QUANTITY_PATTERN,
                        description="memory per worker pod (a Kubernetes quantity)")
    gpu_memory_gib: float = Field(80.0, gt=0, le=1024, description="memory of one of its GPUs (H100: 80, H200: "
                                  "141); the memory planner checks a service's largest request against it")


def field_path(loc: tuple | list, root: str = "") -> str:
    """A pydantic error location as a field path: ("subjects", 0, "image") -> "subjects[0].image"."""
    path = root
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def format_validation_error(error: ValidationError, root: str = "") -> str:
    return "; ".join(f"{field_path(item['loc'], root) or '(document)'}: {item['msg']}" for item in error.errors())


MAX_MANIFEST_BYTES = 1024 * 1024
MAX_MANIFEST_NODES = 100_000  # YAML nodes with every alias expanded (a real manifest has hundreds)


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses a document whose aliases would expand past MAX_MANIFEST_NODES (the
    "billion laughs"): measured on the composed node graph, before anything is built."""

    def construct_document(self, node):
        if _expanded_size(node, {}) > MAX_MANIFEST_NODES:
            raise SpecError(f"the YAML expands to more than {MAX_MANIFEST_NODES} nodes through its aliases "
                            "(&anchor / *alias); write the manifest out instead")
        return super().construct_document(node)


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Nodes under `node`, counting an aliased node each time it is used (memoized: linear in the graph)."""
    key = id(node)
    if key not in sizes:
        sizes[key] = 1  # a recursive alias counts once
        children = node.value if isinstance(node, yaml.SequenceNode) else \
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
        sizes[key] = 1 + sum(_expanded_size(child, sizes) for child in children)
    return sizes[key]


def read_manifest_documents(path: str | Path) -> list[Any]:
    """The YAML documents of a manifest file, read safely: a regular file of at most 1 MiB (not a
    directory or a device), UTF-8, aliases bounded. SpecError says what is wrong in one line (the caller
    names the file)."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise SpecError("no such file") from None
    except OSError as e:
        raise SpecError(f"cannot read it ({e.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise SpecError("is a directory; give a manifest file")
    if not stat.S_ISREG(info.st_mode):
        raise SpecError("not a regular file (a device, pipe or socket); give a manifest file")
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise SpecError(f"cannot read it ({e.strerror})") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise SpecError(f"larger than {MAX_MANIFEST_BYTES} bytes; a manifest is much smaller")
    try:
        return [doc for doc in yaml.load_all(raw.decode("utf-8"), Loader=_BoundedLoader) if doc is not None]
    except UnicodeDecodeError:
        raise SpecError("not UTF-8 text") from None
    except yaml.YAMLError as e:
        raise SpecError(f"not valid YAML: {str(e).splitlines()[0]}") from None
    except RecursionError:
        raise SpecError("the YAML is nested too deeply") from None


def load_resource(source: str | Path | dict[str, Any], model: type[BaseModel]) -> Any:
    """Validate a manifest (a YAML file path or a parsed dict) against a resource model."""
    if isinstance(source, dict):
        data = source
    else:
        documents = read_manifest_documents(source)
        if len(documents) != 1:
            raise SpecError(f"{len(documents)} YAML documents; give the one {model.__name__} manifest")
        data = documents[0]
    if not isinstance(data, dict):
        raise SpecError("the manifest must be a YAML mapping")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise SpecError(format_validation_error(e)) from None
