"""Pieces shared by every resource: metadata, storage settings, loading a manifest with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

GROUP = "polyvivid.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


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


class SchedulingSpec(ApiModel):
    """Where and how the pods run; passed through to every pod the operator creates for the resource."""

    image: str | None = Field(None, description="container image (default: the operator's workload image)")
    node_selector: dict[str, str] = Field(default_factory=dict, description="nodeSelector of the pods")
    tolerations: list[Toleration] = Field(default_factory=list, description="tolerations of the pods")
    queue: str | None = Field(None, description="Kueue LocalQueue name (label kueue.x-k8s.io/queue-name); "
                                                "Kueue then admits the job when the quota allows")
    priority_class: str | None = Field(None, description="PriorityClass of the pods")


class WorkerShape(ApiModel):
    """One pod of a Ray cluster's worker group (the head pod runs no GPU work)."""

    gpus: int = Field(1, ge=0, le=16, description="GPUs per worker pod; 0 makes CPU-only workers")
    cpus: int = Field(8, ge=1, le=512, description="CPU cores per worker pod")
    memory: str = Field("64Gi", pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$",
                        description="memory per worker pod (a Kubernetes quantity)")


def field_path(loc: tuple | list, root: str = "") -> str:
    """A pydantic error location as a field path: ("subjects", 0, "image") -> "subjects[0].image"."""
    path = root
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def format_validation_error(error: ValidationError, root: str = "") -> str:
    return "; ".join(f"{field_path(item['loc'], root) or '(document)'}: {item['msg']}" for item in error.errors())


def load_resource(source: str | Path | dict[str, Any], model: type[BaseModel]) -> Any:
    """Validate a manifest (a YAML file path or a parsed dict) against a resource model."""
    if isinstance(source, dict):
        data = source
    else:
        path = Path(source)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise SpecError(f"{path}: no such file") from None
        except yaml.YAMLError as e:
            raise SpecError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SpecError("the manifest must be a YAML mapping")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise SpecError(format_validation_error(e)) from None
