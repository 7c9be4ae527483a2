"""The custom resources (polyvivid.io/v1alpha1) as pydantic models: the one source of the CRD
schemas and of what the workloads accept. No torch import here: the operator uses this package."""

from .common import API_VERSION, GROUP, ObjectMeta, SecretRef, SpecError, StorageSpec, load_resource
from .curation import CurationJob, CurationSpec
from .service import PolyVividService, ServiceSpec
from .training import PolyVividTraining, TrainingSpec

__all__ = ["API_VERSION", "GROUP", "ObjectMeta", "SecretRef", "SpecError", "StorageSpec", "load_resource",
           "CurationJob", "CurationSpec", "PolyVividService", "ServiceSpec", "PolyVividTraining", "TrainingSpec"]
