"""`make bench` emits well-formed JSON lines (the timings themselves are not asserted here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_model_step_line_has_every_figure():
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--only", "model_step", "--height", "64", "--width", "64",
         "--frames", "5", "--grid", "2", "--repeats", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(l) for l in result.stdout.splitlines() if l.startswith("{")]
    assert len(lines) == 1
    line = lines[0]
    assert line["name"] == "model_step" and line["subjects"] == 2 and line["video_tokens"] == 2 * 4 * 4
    assert set(line["seconds_per_step"]) == {"base", "polyvivid", "token_concat_video_res", "token_concat_llava_grid"}
    assert all(v > 0 for v in line["seconds_per_step"].values())
    assert set(line["ratio"]) == {"polyvivid/base", "token_concat_video_res/base", "token_concat_llava_grid/base"}
    assert line["peak_rss_mib"] > 100 and isinstance(line["pass"], bool)


def test_train_build_line_has_every_figure():
    """At tiny widths the process itself dominates (the figure is meant for hunyuan-13b widths): only the
    line's form is checked here."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--only", "train_build", "--build-preset", "tiny",
         "--build-layers", "1,1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    (line,) = [json.loads(l) for l in result.stdout.splitlines() if l.startswith("{")]
    assert line["name"] == "train_build" and line["ranks"] == 2
    assert set(line["rss_over_held_bf16"]) == {"streamed", "whole_fp32"} and line["ratio"]["streamed/whole_fp32"] > 0
    assert line["held_bf16_gib"]["streamed"] <= line["held_bf16_gib"]["whole_fp32"] * 1.05
    assert line["target"] == 1.25 and isinstance(line["pass"], bool)


def test_serve_memory_line_has_every_figure():
    """The GPU check of the memory defaults, run here on the tiny preset on CPU: only the line's form (its
    figures are for a lent GPU: peak_gib and estimate/peak appear only on CUDA)."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--only", "serve_memory", "--frames", "5", "--height", "64",
         "--width", "64", "--steps", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    (line,) = [json.loads(l) for l in result.stdout.splitlines() if l.startswith("{")]
    assert line["name"] == "serve_memory" and line["preset"] == "tiny" and line["request"]["steps"] == 2
    assert set(line["seconds_per_request"]) == {"no_cache", "step_cache"} and line["planner_estimate_gib"] > 0
    assert line["step_cache"]["threshold"] == 0.1 and 0 <= line["step_cache"]["steps_skipped"] <= 1
    assert "peak_gib" not in line  # CPU: no GPU peak to compare
