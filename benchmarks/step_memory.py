"""The memory planner's check: one training step of PolyVividTransformer on CPU (forward, backward, AdamW),
printing its peak memory (the process's peak RSS, VmHWM, above its RSS before the build) and its token counts
as JSON; or, with MODE "inference", one sampling forward (no grad), above the RSS of the built model.

  MALLOC_MMAP_THRESHOLD_=65536 python -m benchmarks.step_memory CONFIG_JSON FRAMES HEIGHT WIDTH MODE
  (MODE: 1 training with activation checkpointing, 0 without, inference)

Run it with MALLOC_MMAP_THRESHOLD_ set (measure() does): glibc then maps every allocation of 64 KiB or more
on its own and unmaps it when freed, so the RSS follows the live tensors, as a GPU's max_memory_allocated
does, instead of keeping freed memory in its heap.
"""

import json
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBJECTS, GRID = 2, 4  # two subjects of a 4x4 LLaVA grid: 32x32 px images, 16 subject tokens each


def measure(config: dict, frames: int, height: int, width: int, checkpointing: bool | str) -> dict:
    """{"peak_bytes", "video_tokens", "text_tokens"} of one step (checkpointing "inference": one no-grad
    forward), in a fresh process."""
    # an environment of its own: whatever a caller (a long test session) set must not change what is measured
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    env.update(MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="2", HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-m", "benchmarks.step_memory", json.dumps(config), str(frames), str(height),
                          str(width), checkpointing if isinstance(checkpointing, str) else str(int(checkpointing))],
                         capture_output=True, text=True, check=True, env=env,
                         cwd=ROOT)
    return json.loads(out.stdout.splitlines()[-1])


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> None:
    """Start the kernel's peak-RSS count (VmHWM) again from now."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss() -> int:
    """This process's own peak RSS since reset_peak_rss(). Not ru_maxrss: after fork and exec it keeps the
    parent's peak (a test session of 740 MB measured 740 MB for every step)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def main() -> None:
    from polyvivid.model.rope import interaction_positions
    from polyvivid.model.transformer import PolyVividTransformer

    config, (frames, height, width), mode = json.loads(sys.argv[1]), map(int, sys.argv[2:5]), sys.argv[5]
    ckpt = mode == "1"
    text_pos, subject_pos = interaction_positions([40, 10, 10], [(GRID, GRID)] * SUBJECTS)
    g = torch.Generator().manual_seed(0)
    latent = dict(
        hidden_states=torch.randn(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8, generator=g),
        timestep=torch.tensor([500.0]), guidance=torch.tensor([1000.0]),
        encoder_hidden_states=torch.randn(1, len(text_pos), config["text_embed_dim"], generator=g),
        encoder_attention_mask=torch.ones(1, len(text_pos), dtype=torch.long),
        pooled_projections=torch.randn(1, config["pooled_projection_dim"], generator=g),
        subject_latents=torch.randn(1, SUBJECTS, 16, 2 * GRID, 2 * GRID, generator=g),
        text_positions=text_pos[None], subject_positions=subject_pos[None])
    if mode == "inference":
        model = PolyVividTransformer(**config).eval()
        with torch.no_grad():
            model(**dict(latent, hidden_states=latent["hidden_states"][:, :, :1, :2, :2]))  # warm-up
            before = current_rss()
            reset_peak_rss()
            model(**latent)
    else:
        step(PolyVividTransformer, config, latent, ckpt, scale=0)  # a tiny step first: lazy imports, threads, pools
        before = current_rss()
        reset_peak_rss()
        step(PolyVividTransformer, config, latent, ckpt)
    print(json.dumps({"peak_bytes": peak_rss() - before,
                      "video_tokens": latent["hidden_states"][0, 0].numel() // 4,
                      "text_tokens": len(text_pos) + SUBJECTS * GRID * GRID}))  # text, and subject tokens


def step(model_class, config: dict, inputs: dict, checkpointing: bool, scale: int = 1) -> None:
    """Forward, backward and AdamW's first step; scale 0: on one latent frame of 2x2 (a warm-up)."""
    if not scale:
        inputs = dict(inputs, hidden_states=inputs["hidden_states"][:, :, :1, :2, :2])
    model = model_class(**config).train()
    model.freeze_base()
    if checkpointing:
        model.enable_gradient_checkpointing()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loss = (model(**inputs).sample - 1).pow(2).mean()
    loss.backward()
    opt.step()


if __name__ == "__main__":
    main()
