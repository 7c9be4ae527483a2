"""Building the transformer without a whole copy of the base (issue 21, item 1): built on the meta device,
sharded by FSDP2, then each rank reads only its rows of every base weight from the safetensors files.
Real torchrun process groups (gloo) on CPU, a tiny HunyuanVideo saved in the diffusers layout."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from diffusers import HunyuanVideoTransformer3DModel

from polyvivid.model.loading import SafetensorsDir, load_weights
from polyvivid.model.transformer import PolyVividTransformer
from tests.conftest import free_port
from tests.model.test_pipeline import save_tiny_hunyuanvideo_and_llava
from tests.train.conftest import polyvivid, progress, training_manifest, worker_env, write_spec


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(HunyuanVideo dir, LLaVA dir) with the transformer saved in several files beside an index, as the
    published 13B transformer is."""
    root = tmp_path_factory.mktemp("base")
    hv, llava, transformer = save_tiny_hunyuanvideo_and_llava(root)
    for old in (hv / "transformer").glob("*.safetensors"):
        old.unlink()
    transformer.save_pretrained(hv / "transformer", max_shard_size="200KB")
    return hv, llava


def reference_state(hv, **options) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return PolyVividTransformer.from_hunyuanvideo(hv / "transformer", lora_rank=4, **options).state_dict()


def test_weights_stream_from_an_index_of_several_files_and_cast_on_the_way(base, tmp_path):
    hv, _ = base
    files = sorted(p.name for p in (hv / "transformer").glob("*.safetensors*"))
    assert len(files) > 3 and files[-1] == "diffusion_pytorch_model.safetensors.index.json"
    saved = HunyuanVideoTransformer3DModel.from_pretrained(hv / "transformer").state_dict()
    model = PolyVividTransformer.from_hunyuanvideo(hv / "transformer", lora_rank=4)
    ours = model.state_dict()
    for name, tensor in saved.items():  # every base weight where peft put it, bit for bit
        assert torch.equal(ours.get(name, ours.get(name.replace(".weight", ".base_layer.weight"))), tensor), name

    # A bf16 checkpoint into a bf16 model reads straight into the parameters; into fp32 it is cast.
    bf16 = HunyuanVideoTransformer3DModel.from_pretrained(hv / "transformer", torch_dtype=torch.bfloat16)
    bf16.save_pretrained(tmp_path / "bf16")
    as_bf16 = PolyVividTransformer.from_hunyuanvideo(tmp_path / "bf16", torch_dtype=torch.bfloat16, lora_rank=4)
    as_fp32 = PolyVividTransformer.from_hunyuanvideo(tmp_path / "bf16", lora_rank=4)
    name = "transformer_blocks.0.attn.to_q.weight"
    assert as_bf16.state_dict()[name].dtype == torch.bfloat16 and as_fp32.state_dict()[name].dtype == torch.float32
    assert torch.equal(as_bf16.state_dict()[name].float(), as_fp32.state_dict()[name])

    # A header whose byte range does not match its shape is a damaged file.
    import struct

    (path,) = (tmp_path / "bf16").glob("*.safetensors")
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    name = next(k for k in header if k != "__metadata__" and header[k]["shape"] and header[k]["shape"][0] > 1)
    header[name]["shape"] = [header[name]["shape"][0] - 1, *header[name]["shape"][1:]]  # no longer: still fits
    text = json.dumps(header, separators=(",", ":")).encode().ljust(length)
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / path.name).write_bytes(data[:8] + text + data[8 + length:])
    with pytest.raises(ValueError, match="header gives .* a damaged file"):
        SafetensorsDir(tmp_path / "damaged")

    # A file cut short is named, not read as zeros.
    (path,) = (tmp_path / "bf16").glob("*.safetensors")
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(ValueError, match="truncated"):
        load_weights(as_bf16, SafetensorsDir(tmp_path / "bf16"), as_bf16.base_weight_sources())


SHARDED_BUILD = textwrap.dedent("""
    import json, sys, torch
    from torch.distributed.tensor import DTensor
    from polyvivid.api import PolyVividTraining, load_resource
    from polyvivid.train.parallel import init_distributed
    from polyvivid.train.trainer import build_transformer

    spec = load_resource(json.loads(open(sys.argv[1]).read()), PolyVividTraining).spec
    env = init_distributed()
    torch.manual_seed(spec.seed)
    transformer, model = build_transformer(spec, env, torch.float32)
    parts = {}
    for name, p in transformer.named_parameters():
        local = p.to_local() if isinstance(p, DTensor) else p
        parts[name] = {"rows": list(local.shape[:1]), "sharded": isinstance(p, DTensor),
                       "dtype": str(p.dtype), "grad": p.requires_grad}
        full = p.full_tensor() if isinstance(p, DTensor) else p
        torch.save(full.detach(), f"{sys.argv[2]}/{env.rank}-{name}.pt")
    json.dump(parts, open(f"{sys.argv[2]}/rank{env.rank}.json", "w"))
    torch.distributed.destroy_process_group()
""")


def test_fsdp2_ranks_read_only_their_rows_and_assemble_the_same_model(base, tmp_path):
    hv, llava = base
    manifest = training_manifest(str(tmp_path / "data"), str(tmp_path / "run"), parallelism="fsdp",
                                 model={"hunyuanvideo": str(hv), "llava": str(llava)})
    (tmp_path / "spec.json").write_text(json.dumps(manifest))
    (tmp_path / "build.py").write_text(SHARDED_BUILD)
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                             "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
                             str(tmp_path / "build.py"), str(tmp_path / "spec.json"), str(out)],
                            capture_output=True, text=True, env=worker_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    reference = reference_state(hv)
    assert set(ranks[0]) == set(reference)
    for name, full in reference.items():
        part = ranks[0][name]
        assert part["sharded"], name
        assert part["rows"][0] + ranks[1][name]["rows"][0] == full.shape[0] and part["rows"][0] < full.shape[0]
        for rank in (0, 1):  # gathered, each rank's rows make the model from_hunyuanvideo builds whole
            assert torch.equal(torch.load(out / f"{rank}-{name}.pt", weights_only=True), full), name
    own = {n for n, p in ranks[0].items() if p["grad"]}
    assert own and all(ranks[0][n]["dtype"] == "torch.float32" for n in own)  # fp32 master weights


def test_a_run_on_a_real_base_trains_the_same_under_ddp_and_fsdp2(base, synth_dataset, tmp_path):
    hv, llava = base
    losses = {}
    for mode in ("ddp", "fsdp"):
        output = tmp_path / mode
        spec = write_spec(tmp_path / f"{mode}.yaml", training_manifest(
            synth_dataset, str(output), steps=(1, 1), low_res=0, parallelism=mode,
            model={"hunyuanvideo": str(hv), "llava": str(llava)}, lora={"rank": 4, "alpha": 4}))
        result = polyvivid("train", str(spec), "--local", "--nproc", "2")
        assert result.returncode == 0, result.stderr[-3000:]
        state = progress(str(output))
        assert state["status"] == "succeeded"
        losses[mode] = [row[1] for row in state["history"]]
    assert len(losses["ddp"]) == 2 and np.allclose(losses["ddp"], losses["fsdp"], atol=1e-4)


def test_a_base_with_weights_hunyuanvideo_does_not_have_is_refused_by_both_builds(base, synth_dataset, tmp_path):
    import shutil

    from safetensors.torch import save_file

    hv, llava = base
    other = tmp_path / "Other"
    shutil.copytree(hv, other)
    save_file({"vision_tower.proj.weight": torch.zeros(2, 2)}, other / "transformer" / "extra.safetensors")
    index = other / "transformer" / "diffusion_pytorch_model.safetensors.index.json"
    content = json.loads(index.read_text())
    content["weight_map"]["vision_tower.proj.weight"] = "extra.safetensors"
    index.write_text(json.dumps(content))
    with pytest.raises(ValueError, match="has weights HunyuanVideo does not: \\['vision_tower.proj.weight'\\]"):
        PolyVividTransformer.from_hunyuanvideo(other / "transformer", lora_rank=4)
    spec = write_spec(tmp_path / "spec.yaml", training_manifest(
        synth_dataset, str(tmp_path / "run"), steps=(1, 0), low_res=0, model={"hunyuanvideo": str(other), "llava": str(llava)}))
    result = polyvivid("train", str(spec))  # the sharded build (meta, FSDP2 rows) checks it too
    assert result.returncode == 2 and "has weights HunyuanVideo does not" in result.stderr
    assert "Traceback" not in result.stderr
