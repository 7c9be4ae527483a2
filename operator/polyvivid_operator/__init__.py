"""The PolyVivid operator (kopf): reconciles PolyVividTraining, CurationJob and PolyVividService into
Kubeflow PyTorchJobs, KubeRay RayJobs and RayServices. Imports polyvivid.api, never torch.

children/   pure functions that build child objects from a resource (unit-testable, no API calls)
"""
