"""`make demo`'s script end to end: synthetic data -> tiny training -> local Ray Serve -> HTTP -> mp4."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from polyvivid.video import decode_mp4

from .conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


def test_demo_script_runs_the_whole_local_flow(tmp_path):
    env = {**os.environ, "BIN": str(Path(sys.executable).parent), "OUT": str(tmp_path / "out"),
           "PORT": str(free_port()), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([str(ROOT / "scripts" / "demo.sh")], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for step in ("1/5", "2/5", "3/5", "4/5", "5/5"):
        assert f"== {step}" in result.stdout
    assert decode_mp4((tmp_path / "out" / "demo.mp4").read_bytes()).shape == (9, 64, 64, 3)
    assert (tmp_path / "out" / "demo" / "run" / "final" / "polyvivid_weights.safetensors").exists()
    assert list((tmp_path / "out" / "demo" / "jobs" / "jobs").glob("*/video.mp4"))
