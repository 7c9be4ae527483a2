"""PolyVivid: multi-subject video customization on HunyuanVideo.

`import polyvivid` is light (no torch): the model classes load on first use, so the operator and
the API models can import this package in an image without torch.
"""

__version__ = "0.1.0"

_LAZY = {
    "PolyVividTransformer": "polyvivid.model.transformer",
    "PolyVividPipeline": "polyvivid.model.pipeline",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'polyvivid' has no attribute {name!r}")
