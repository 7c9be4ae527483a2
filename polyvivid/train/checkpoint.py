"""Checkpoints with torch.distributed.checkpoint, kept in the artifact store.

Layout under OUTPUT/: checkpoints/step-00000100/ (DCP files: every rank uploads what it wrote, rank 0
also `.metadata` and trainer_state.json), and checkpoints/latest naming the newest complete one.
`latest` moves only after every rank has uploaded, so a crash mid-save leaves the previous checkpoint
as the one to resume from. Only PolyVivid's own parameters and their optimizer state are saved: the
frozen base is reloaded from its source.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from ..storage import ArtifactStore, with_retries
from .parallel import DistEnv

LATEST = "checkpoints/latest"


def _barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def _states(model, optimizer, own: set[str]):
    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": {k: v for k, v in model_state.items() if k in own}, "optim": optim_state}


def save_checkpoint(model, optimizer, own: set[str], trainer_state: dict, step: int, env: DistEnv,
                    store: ArtifactStore, scratch: Path) -> str:
    name = f"step-{step:08d}"
    local = scratch / f"rank{env.rank}" / name
    shutil.rmtree(local, ignore_errors=True)
    with warnings.catch_warnings():  # a single process is a supported case, not worth a warning
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(_states(model, optimizer, own), checkpoint_id=str(local))
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        key = f"checkpoints/{name}/{path.relative_to(local).as_posix()}"
        with_retries(store.upload_file, path, key, what=f"upload {key}")
    _barrier(env)  # every rank's files are up
    if env.is_main:
        with_retries(store.write_text, f"checkpoints/{name}/trainer_state.json", json.dumps(trainer_state),
                     what="write trainer_state.json")
        with_retries(store.write_text, LATEST, name, what="write checkpoints/latest")
    _barrier(env)
    shutil.rmtree(local, ignore_errors=True)
    return f"checkpoints/{name}"


def load_latest_checkpoint(model, optimizer, own: set[str], env: DistEnv, store: ArtifactStore,
                           scratch: Path) -> dict | None:
    """Restore the newest complete checkpoint; returns its trainer state, or None to start fresh."""
    if not store.exists(LATEST):
        return None
    name = store.read_text(LATEST).strip()
    local = scratch / f"rank{env.rank}" / "restore" / name
    shutil.rmtree(local, ignore_errors=True)
    with_retries(store.download_dir, f"checkpoints/{name}", local, what=f"download checkpoints/{name}")
    states = _states(model, optimizer, own)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(states, checkpoint_id=str(local))
    set_state_dict(model, optimizer, model_state_dict=states["model"], optim_state_dict=states["optim"],
                   options=StateDictOptions(strict=False))
    trainer_state = json.loads((local / "trainer_state.json").read_text())
    shutil.rmtree(local, ignore_errors=True)
    return trainer_state
