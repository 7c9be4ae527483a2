"""Base weights read straight from safetensors files into the model's own memory, one tensor at a time,
and for a sharded (FSDP2) parameter only the rows this rank holds: no second copy of the model, in any
dtype, at any point.

A diffusers weights directory holds one `*.safetensors` file or several beside an index
(`*.safetensors.index.json`, whose `weight_map` names each tensor's file). A safetensors file is a
little-endian u64 header length, a JSON header (per tensor: dtype, shape and the byte range of its
data) and the data, row-major. We read the headers and `readinto` each parameter's storage from its byte
range: safetensors' own loaders return a new tensor (a whole file with `load_file`), which is the
copy this avoids.

Typical use on a model built on the meta device (`PolyVividTransformer.build_on_meta`), after
`fully_shard` or not:

    materialize(model, device, keep=own_parameter_names)  # allocate; PolyVivid's own keep their init
    load_weights(model, SafetensorsDir(base_dir), model.base_weight_sources())
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}


@dataclass(frozen=True)
class StoredTensor:
    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # where its data starts in the file

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * torch.empty((), dtype=self.dtype).element_size()


def read_header(path: Path) -> dict[str, StoredTensor]:
    with open(path, "rb") as f:
        try:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        except (struct.error, ValueError) as e:
            raise ValueError(f"{path.name}: not a safetensors header ({type(e).__name__}): a damaged file") from None
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] not in DTYPES:
            raise ValueError(f"{path.name}: {name} has dtype {entry['dtype']}, which PolyVivid does not read")
        stored = StoredTensor(path, DTYPES[entry["dtype"]], tuple(entry["shape"]), 8 + length + entry["data_offsets"][0])
        begin, end = entry["data_offsets"]
        if end - begin != math.prod(stored.shape) * torch.empty((), dtype=stored.dtype).element_size():
            raise ValueError(f"{path.name}: {name}'s header gives {end - begin} bytes for {list(stored.shape)} "
                             f"{entry['dtype']}: a damaged file")
        tensors[name] = stored
    return tensors


class SafetensorsDir:
    """The tensors of a weights directory by name (the index's files when there is an index, else every
    `*.safetensors` file); only the headers are read here."""

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        # the plain index, not a variant's (diffusion_pytorch_model.fp16.safetensors.index.json)
        indexes = sorted(directory.glob("*.safetensors.index.json"), key=lambda p: (p.name.count("."), p.name))
        if indexes:
            files = sorted({directory / f for f in json.loads(indexes[0].read_text())["weight_map"].values()})
        else:
            files = sorted(directory.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no .safetensors weights in {directory}")
        self.directory = directory
        self.tensors: dict[str, StoredTensor] = {}
        for path in files:
            if not path.is_file():
                raise FileNotFoundError(f"{path.name} is not a readable file in {directory}")
            for name, stored in read_header(path).items():
                if name in self.tensors:
                    raise ValueError(f"{name} is in both {self.tensors[name].path.name} and {path.name}")
                self.tensors[name] = stored

    def read_rows(self, name: str, out: torch.Tensor, first_row: int = 0) -> None:
        """Fill `out` with rows first_row .. first_row + len(out) of tensor `name` (all of it: first_row 0 and
        `out` of the tensor's shape); the file's dtype is cast to out's."""
        stored = self.tensors[name]
        rows = out.shape[0] if out.dim() else 1
        if tuple(out.shape[1:]) != stored.shape[1:] or (out.dim() == 0) != (len(stored.shape) == 0) \
                or first_row + rows > (stored.shape[0] if stored.shape else 1):
            raise ValueError(f"{name}: stored as {list(stored.shape)}, which does not fit rows {first_row}.. of "
                             f"a parameter part of shape {list(out.shape)}")
        if out.numel() == 0:
            return
        direct = out.dtype == stored.dtype and out.device.type == "cpu" and out.is_contiguous()
        target = out if direct else torch.empty(out.shape, dtype=stored.dtype)
        with open(stored.path, "rb", buffering=0) as f:
            f.seek(stored.offset + first_row * stored.row_bytes)
            view = memoryview(target.reshape(-1).view(torch.uint8).numpy())
            done = 0
            while done < len(view):  # a read returns at most 2 GiB, and a network filesystem may return less
                got = f.readinto(view[done:])
                if not got:
                    raise ValueError(f"{stored.path.name} is truncated: {name} ends past the end of the file")
                done += got
        if not direct:
            out.copy_(target)


def _local_rows(param: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(the part of `param` this process holds, the global row it starts at). A DTensor (FSDP2) must be
    sharded on rows only, as fully_shard shards."""
    from torch.distributed.tensor import DTensor

    if not isinstance(param, DTensor):
        return param.data, 0
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    if any(offset[1:]) or tuple(shape[1:]) != tuple(param.shape[1:]):
        raise ValueError(f"a parameter sharded as {param.placements} is not split by rows")
    local = param.to_local()
    return local, (offset[0] if len(offset) else 0)


def tensors_by_name(module: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


@torch.no_grad()
def load_weights(module: nn.Module, source: SafetensorsDir, names: dict[str, str]) -> None:
    """Read each of module's tensors named in `names` (ours -> the source's name) from `source`; a sharded
    parameter reads only this process's rows."""
    missing = sorted(set(names.values()) - set(source.tensors))
    if missing:
        raise ValueError(f"{source.directory} lacks {len(missing)} base weights, e.g. {missing[:3]}")
    tensors = tensors_by_name(module)
    for ours, theirs in names.items():
        local, first_row = _local_rows(tensors[ours])
        try:
            source.read_rows(theirs, local, first_row)
        except ValueError as e:
            raise ValueError(f"{source.directory}: {e} ({ours})") from None


def materialize(module: nn.Module, device: torch.device | str, keep: set[str] = frozenset()) -> None:
    """Allocate every tensor of a model built on the meta device (sharded or not) on `device`, uninitialised,
    except that those named in `keep` (already materialised and initialised) keep their values."""
    tensors = tensors_by_name(module)
    saved = {name: _local_rows(tensors[name])[0].detach().to("cpu", copy=True) for name in keep}
    module.to_empty(device=device)
    tensors = tensors_by_name(module)
    with torch.no_grad():
        for name, value in saved.items():
            _local_rows(tensors[name])[0].copy_(value)
