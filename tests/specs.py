"""Spec fragments that tests share."""

from __future__ import annotations

import copy

from polyvivid.api.curation import REQUIRED_MODELS


def with_random_models(spec: dict) -> dict:
    """A CurationJob spec body with `preset: tiny` (random weights, the explicit opt-in a spec must make)
    for every required model the body leaves unset."""
    spec = copy.deepcopy(spec)
    for _, alias in REQUIRED_MODELS:
        spec.setdefault(alias, {}).setdefault("model", {"preset": "tiny"})
    return spec
