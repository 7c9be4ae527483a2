"""Checkpoints of PolyVivid's own parameters and their AdamW state, in safetensors and JSON.

Layout under OUTPUT/ (the frozen base is never saved: it is reloaded from its source):

    checkpoints/step-00000100/model.safetensors      PolyVivid's own (trainable) parameters, full tensors by name
    checkpoints/step-00000100/optimizer.safetensors  AdamW state: state.<name>.step, .exp_avg, .exp_avg_sq
    checkpoints/step-00000100/optimizer.json         AdamW param_groups: hyperparameters, params by name
    checkpoints/step-00000100/trainer_state.json     step, stage, data position, seed, loss history
    checkpoints/step-00000100/manifest.json          written last: each file above with its size and SHA-256
    checkpoints/latest                               the newest checkpoint's name, for people; resume ignores it

Nothing read from storage is unpickled: tensors are safetensors, everything else JSON. (This replaced
torch.distributed.checkpoint, whose `.metadata` is a pickle: whoever could write the store could run
code in every worker.)

A checkpoint counts only when its manifest is there and every file matches it. Resume scans
checkpoints/ newest first, skips each damaged or incomplete checkpoint with one log line, and loads the
newest good one; with none good the run starts fresh. Only rank 0 reads and decides: the others get
the trainer state and every tensor from rank 0 over the process group (set_*_state_dict with
broadcast_from_rank0), so all ranks resume from the same checkpoint, and storage is read once.

Saving gathers full tensors to rank 0 (one at a time, onto its CPU), which writes the files. That is
affordable because only PolyVivid's own parameters are saved: at hunyuan-13b with LoRA rank 64 they are
258M (the injection's zero-initialised FCs 189M, the LoRA 69M), 1.0 GB in fp32 and 3.1 GB with AdamW's
two moments, once per checkpointInterval. Sharded files per rank would save rank 0's memory and upload
time but would need every rank's files to agree on a manifest; not worth it at this size.

After a new checkpoint is complete, rank 0 deletes those older than the keep-th newest good one, where
"good" means written or verified by this process: a checkpoint damaged since is never counted, so the
newest good ones always stay. A deletion removes the manifest first, so a half-deleted checkpoint is
just incomplete. A resume racing a pruning run (a restarted job while the old one still runs) can see
its chosen checkpoint vanish; it then scans again, finding the newer complete one whose manifest
appeared meanwhile, rather than starting fresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_model_state_dict, set_optimizer_state_dict,
)

from ..storage import ArtifactStore, ObjectNotFound, StorageError, with_retries
from .parallel import DistEnv

LATEST = "checkpoints/latest"
MANIFEST = "manifest.json"
FILES = ("model.safetensors", "optimizer.safetensors", "optimizer.json", "trainer_state.json")
FORMAT = "polyvivid-checkpoint/1"
ADAMW_STATE = {"step", "exp_avg", "exp_avg_sq"}  # per parameter; AdamW is the one optimizer the spec offers
_NAME = re.compile(r"step-(\d+)")
log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """Resume cannot go on: storage unreadable, or an intact checkpoint that does not fit this model."""


class _Damaged(Exception):
    """A checkpoint that is incomplete or does not match its manifest; the message says why."""


@dataclass
class _Loaded:
    name: str
    model: dict[str, torch.Tensor]  # parameter name -> full tensor
    optim_tensors: dict[str, torch.Tensor]  # "state.<parameter name>.<field>" -> tensor
    param_groups: object  # as parsed from optimizer.json; _fit checks it
    trainer_state: dict


def _step(name: str) -> int:
    return int(name.split("-", 1)[1])


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _unwrap(model):
    return getattr(model, "module", model)  # DDP


def _share(value, env: DistEnv):
    """Rank 0's JSON-able `value` on every rank: a length, then UTF-8 bytes (no pickle)."""
    if not env.distributed:
        return value
    data = json.dumps(value).encode() if env.is_main else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=env.device)
    dist.broadcast(size, src=0)
    buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(env.device) if env.is_main
           else torch.empty(int(size), dtype=torch.uint8, device=env.device))
    dist.broadcast(buf, src=0)
    return json.loads(buf.cpu().numpy().tobytes())


class Checkpoints:
    """Saves and restores the training state under OUTPUT/checkpoints/; every rank makes the same calls."""

    def __init__(self, store: ArtifactStore, env: DistEnv, scratch: Path, keep: int):
        self.store, self.env, self.scratch, self.keep = store, env, scratch, keep
        self.good: set[str] = set()  # written or verified by this process: what pruning may count on

    def names(self, keys: list[str] | None = None) -> list[str]:
        """The checkpoints under checkpoints/ (in `keys`, else listed now), complete or not, newest first."""
        parts = (key.split("/") for key in (self._keys() if keys is None else keys))
        return sorted({p[1] for p in parts if len(p) > 2 and _NAME.fullmatch(p[1])}, key=_step, reverse=True)

    def _keys(self) -> list[str]:
        return with_retries(self.store.list, "checkpoints/", what="list checkpoints/")

    # ----------------------------------------------------------------------------- save
    def save(self, model, optimizer, own: set[str], trainer_state: dict, step: int) -> str:
        name = f"step-{step:08d}"
        # Collectives: every rank takes part, only rank 0 gets the full tensors (on CPU). Frozen
        # parameters are left out before anything is gathered.
        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        model_state = get_model_state_dict(model, options=options)
        optim_state = get_optimizer_state_dict(model, optimizer, options=options)
        error = None
        if self.env.is_main:
            try:
                self._write(name, step, {k: v for k, v in model_state.items() if k in own}, optim_state,
                            trainer_state)
            except StorageError as e:
                error = str(e)
        error = _share(error, self.env)  # also keeps the other ranks from running ahead of the upload
        if error:
            raise StorageError(error)
        return f"checkpoints/{name}"

    def _write(self, name: str, step: int, model_state: dict, optim_state: dict, trainer_state: dict) -> None:
        local = self.scratch / "save" / name
        shutil.rmtree(local, ignore_errors=True)
        local.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in model_state.items()}, local / "model.safetensors")
        save_file({f"state.{fqn}.{key}": value.contiguous()  # AdamW keeps only tensors
                   for fqn, state in optim_state["state"].items() for key, value in state.items()},
                  local / "optimizer.safetensors")
        (local / "optimizer.json").write_text(json.dumps(optim_state["param_groups"]))
        (local / "trainer_state.json").write_text(json.dumps(trainer_state))
        files = {f: {"size": (local / f).stat().st_size, "sha256": _sha256(local / f)} for f in FILES}

        prefix = f"checkpoints/{name}"
        # Left by a run that was then resumed from an older checkpoint: it stops counting before its
        # files are replaced, and counts again only with the new manifest.
        if with_retries(self.store.exists, f"{prefix}/{MANIFEST}", what=f"stat {prefix}/{MANIFEST}"):
            with_retries(self.store.delete, f"{prefix}/{MANIFEST}", what=f"delete {prefix}/{MANIFEST}")
        for f in FILES:
            with_retries(self.store.upload_file, local / f, f"{prefix}/{f}", what=f"upload {prefix}/{f}")
        manifest = {"format": FORMAT, "step": step, "files": files}
        with_retries(self.store.write_text, f"{prefix}/{MANIFEST}", json.dumps(manifest, indent=1),
                     what=f"write {prefix}/{MANIFEST}")
        self.good.add(name)
        with_retries(self.store.write_text, LATEST, name, what=f"write {LATEST}")
        shutil.rmtree(local, ignore_errors=True)
        self._prune(name)

    def _prune(self, newest: str) -> None:
        """Delete the checkpoints older than the keep-th newest good one. Newer ones than `newest` are
        left alone: they were skipped as damaged at resume, and are replaced when the run gets there."""
        older = [n for n in self.names() if _step(n) <= _step(newest)]
        good = [n for n in older if n in self.good]
        if len(good) < self.keep:
            return
        for name in (n for n in older if _step(n) < _step(good[self.keep - 1])):
            keys = with_retries(self.store.list, f"checkpoints/{name}/", what=f"list checkpoints/{name}/")
            for key in sorted(keys, key=lambda k: not k.endswith("/" + MANIFEST)):  # the manifest first
                with_retries(self.store.delete, key, what=f"delete {key}")
            self.good.discard(name)
            log.info("deleted checkpoint checkpoints/%s (keeping the newest %d)", name, self.keep)

    # ----------------------------------------------------------------------------- load
    def load(self, model, optimizer, own: set[str]) -> dict | None:
        """Restore the newest good checkpoint; returns its trainer state, or None to start fresh."""
        model_state, optim_state = {}, {}  # the other ranks pass nothing: they receive rank 0's
        if self.env.is_main:
            try:
                found = self._newest_good()
                if found:
                    model_state, optim_state = found.model, _fit(found, model, optimizer, own)
                decision = {"trainer_state": found.trainer_state if found else None}
            except StorageError as e:
                decision = {"error": f"cannot read {self.store.uri('checkpoints')}: {e}"}
            except CheckpointError as e:
                decision = {"error": str(e)}
        else:
            decision = None
        decision = _share(decision, self.env)  # every rank resumes from rank 0's choice, or none
        if "error" in decision:
            raise CheckpointError(decision["error"])
        if decision["trainer_state"] is None:
            return None
        # The frozen base is not in the checkpoint: strict=False. Rank 0 sends each tensor to the others,
        # which keep their shard (torch sends the list of names and shapes first with
        # broadcast_object_list: a pickle over the process group of what rank 0 built from the verified
        # files, never bytes from storage). A single process has nothing to send.
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=self.env.distributed, strict=False)
        set_model_state_dict(model, model_state, options=options)
        tuples = [{k for k, v in group.items() if isinstance(v, tuple)} for group in optimizer.param_groups]
        set_optimizer_state_dict(model, optimizer, optim_state, options=options)
        for group, keys in zip(optimizer.param_groups, tuples):  # the full-state path turns betas into a list
            group.update({k: tuple(group[k]) for k in keys})
        return decision["trainer_state"]

    def _newest_good(self) -> _Loaded | None:
        skipped: set[str] = set()
        keys = None
        for _ in range(3):  # again only if the listing changed meanwhile (a run still going, pruning)
            seen, keys = keys, self._keys()
            if keys == seen:
                break
            for name in self.names(keys):
                try:
                    loaded = self._read(name)
                except _Damaged as e:
                    if name not in skipped:
                        log.warning("skipping checkpoint checkpoints/%s: %s", name, e)
                        skipped.add(name)
                    continue
                self.good.add(name)
                return loaded
        if skipped:
            log.warning("no good checkpoint in %s: starting from step 0", self.store.uri("checkpoints"))
        return None

    def _read(self, name: str) -> _Loaded:
        """Download, verify against the manifest and parse one checkpoint; raises _Damaged."""
        prefix = f"checkpoints/{name}"
        local = self.scratch / "restore" / name
        shutil.rmtree(local, ignore_errors=True)
        try:
            manifest = _json(self._fetch(prefix, MANIFEST, local), MANIFEST)
            files = manifest.get("files") if isinstance(manifest, dict) else None
            if (not isinstance(files, dict) or manifest.get("format") != FORMAT or set(files) != set(FILES)
                    or not all(isinstance(entry, dict) for entry in files.values())):
                raise _Damaged(f"{MANIFEST} is not a {FORMAT} manifest")
            if manifest.get("step") != _step(name):
                raise _Damaged(f"{MANIFEST} is for step {manifest.get('step')!r}")
            for f in FILES:
                path = self._fetch(prefix, f, local)
                if path.stat().st_size != files[f].get("size"):
                    raise _Damaged(f"{f} has {path.stat().st_size} bytes, {MANIFEST} says {files[f].get('size')!r}")
                if _sha256(path) != files[f].get("sha256"):
                    raise _Damaged(f"{f} does not match its SHA-256 in {MANIFEST}")
            trainer_state = _json(local / "trainer_state.json", "trainer_state.json")
            if not isinstance(trainer_state, dict) or trainer_state.get("step") != _step(name):
                raise _Damaged("trainer_state.json is not for this step")
            param_groups = _json(local / "optimizer.json", "optimizer.json")
            model_state = _tensors(local / "model.safetensors")
            optim_tensors = _tensors(local / "optimizer.safetensors")
        finally:
            shutil.rmtree(local, ignore_errors=True)  # the tensors are in memory by now
        return _Loaded(name, model_state, optim_tensors, param_groups, trainer_state)

    def _fetch(self, prefix: str, file: str, local: Path) -> Path:
        try:
            with_retries(self.store.download_file, f"{prefix}/{file}", local / file, what=f"read {prefix}/{file}")
        except ObjectNotFound:
            raise _Damaged(f"{file} is missing" + (" (incomplete)" if file == MANIFEST else "")) from None
        return local / file


def _json(path: Path, file: str):
    try:
        return json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise _Damaged(f"{file} is not JSON ({e})") from None


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except SafetensorError as e:
        raise _Damaged(f"{path.name} is not safetensors ({e})") from None


def _fit(loaded: _Loaded, model, optimizer, own: set[str]) -> dict:
    """The optimizer state dict for set_optimizer_state_dict, once the checkpoint is seen to fit this
    model and optimizer (an intact checkpoint that does not is an error, not damage: the spec changed)."""
    where = f"checkpoints/{loaded.name} does not fit this model"
    params = {n: p for n, p in _unwrap(model).named_parameters() if n in own}
    state: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in loaded.optim_tensors.items():
        fqn, _, field = key.removeprefix("state.").rpartition(".")
        state.setdefault(fqn, {})[field] = tensor
    if set(loaded.model) != set(params):
        missing, unexpected = sorted(set(params) - set(loaded.model)), sorted(set(loaded.model) - set(params))
        raise CheckpointError(f"{where}: its parameters differ ({len(missing)} missing, e.g. {missing[:2]}; "
                              f"{len(unexpected)} unexpected, e.g. {unexpected[:2]})")
    # A parameter that never had a gradient has no AdamW state; state for another parameter is wrong.
    if not set(state) <= set(params) or any(fields.keys() != ADAMW_STATE for fields in state.values()):
        raise CheckpointError(f"{where}: optimizer.safetensors does not hold {sorted(ADAMW_STATE)} of its parameters")
    for fqn, p in params.items():
        shapes = [loaded.model[fqn].shape] + [t.shape for t in state.get(fqn, {}).values() if t.dim()]
        if any(shape != p.shape for shape in shapes):
            raise CheckpointError(f"{where}: {fqn} is {list(shapes[0])} there, {list(p.shape)} here")

    names = {p: n for n, p in _unwrap(model).named_parameters()}
    saved = loaded.param_groups
    if not isinstance(saved, list) or len(saved) != len(optimizer.param_groups):
        raise CheckpointError(f"{where}: optimizer.json does not hold {len(optimizer.param_groups)} param group(s)")
    for group, current in zip(saved, optimizer.param_groups):
        expected = {**current, "params": [names[p] for p in current["params"]]}
        # JSON kinds as json.dumps would write the optimizer's own values (a tuple becomes a list)
        if not isinstance(group, dict) or group.keys() != expected.keys() or any(
                type(group[k]) is not type(json.loads(json.dumps(v))) for k, v in expected.items()):
            raise CheckpointError(f"{where}: optimizer.json holds other hyperparameters ({sorted(expected)})")
        if group["params"] != expected["params"]:
            raise CheckpointError(f"{where}: optimizer.json lists other parameters")
    return {"state": state, "param_groups": saved}
