"""Loading the metric networks that come as single files (face detector and embedder, I3D): a
torch.export program (`.pt2`, torch.export.save) or a TorchScript archive (torch.jit.save, what the
common FVD code ships). Neither unpickles arbitrary objects. Paths or s3:// URIs."""

from __future__ import annotations

import torch


def load_module(uri: str) -> torch.nn.Module:
    from ..storage import materialize_file

    local = str(materialize_file(uri))
    if local.endswith(".pt2"):
        return torch.export.load(local).module()
    return torch.jit.load(local, map_location="cpu")
