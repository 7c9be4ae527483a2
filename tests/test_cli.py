"""`polyvivid` as a user runs it: a real subprocess, real files, exit codes and stderr."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from PIL import Image

from polyvivid.video import decode_mp4

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def polyvivid(*args, env=None):
    return subprocess.run([sys.executable, "-m", "polyvivid.cli", *args], capture_output=True, text=True,
                          env=env or ENV, timeout=300)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    out = tmp_path_factory.mktemp("subjects")
    result = polyvivid("sample-subjects", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def gen_args(images, output, seed="0"):
    return ["generate", "--prompt", "A man plays the guitar", "--subject", f"man={images / 'man.png'}",
            "--subject", f"guitar={images / 'guitar.png'}", "--num-frames", "9", "--height", "64",
            "--width", "64", "--steps", "3", "--seed", seed, "--output", str(output)]


def test_generate_writes_video_and_contact_sheet_and_same_seed_same_video(images, tmp_path):
    first = polyvivid(*gen_args(images, tmp_path / "a" / "video.mp4"))
    assert first.returncode == 0, first.stderr
    assert "video: file://" in first.stdout and "a/video.mp4" in first.stdout
    frames = decode_mp4((tmp_path / "a" / "video.mp4").read_bytes())
    assert frames.shape == (9, 64, 64, 3)
    sheet = Image.open(tmp_path / "a" / "video_frames.png")
    assert sheet.width > 64 * 3 and sheet.height >= 64 * 2
    again = polyvivid(*gen_args(images, tmp_path / "b.mp4"))
    other = polyvivid(*gen_args(images, tmp_path / "c.mp4", seed="1"))
    assert again.returncode == other.returncode == 0
    # Same seed, same frames: the contact sheet is lossless and must match byte for byte (the mp4's
    # bytes are libx264's business: they were seen to vary run to run for identical frames).
    assert (tmp_path / "b_frames.png").read_bytes() == (tmp_path / "a" / "video_frames.png").read_bytes()
    assert abs(decode_mp4((tmp_path / "b.mp4").read_bytes()).astype(int) - frames).mean() < 2
    assert (tmp_path / "c_frames.png").read_bytes() != (tmp_path / "a" / "video_frames.png").read_bytes()


def test_generate_writes_to_s3(images, s3_env, s3_bucket, tmp_path):
    env = {**ENV, "POLYVIVID_S3_ENDPOINT": s3_env["endpoint"], "AWS_ACCESS_KEY_ID": s3_env["access_key"],
           "AWS_SECRET_ACCESS_KEY": s3_env["secret_key"]}
    result = polyvivid(*gen_args(images, f"{s3_bucket}/videos/v.mp4"), env=env)
    assert result.returncode == 0, result.stderr
    from polyvivid.storage import open_store

    store = open_store(f"{s3_bucket}/videos")
    assert store.list() == ["v.mp4", "v_frames.png"]
    assert decode_mp4(store.read_bytes("v.mp4")).shape == (9, 64, 64, 3)


@pytest.mark.parametrize("change, expected", [
    (dict(subject="man=/no/such.png"), "image not found: /no/such.png"),
    (dict(subject="cat={images}/man.png"), "subject 'cat' does not appear in the prompt"),
    (dict(frames="8"), "num_frames: must be of the form 4k+1"),
    (dict(height="100"), "height: must be a positive multiple of 16"),
    (dict(width="72"), "width: must be a positive multiple of 16"),
    (dict(subject="man"), "expected WORD=IMAGE"),
    (dict(subject="a={images}/man.png", many=True), "at most 4"),
    (dict(subject="man={bad}"), "bad.png: not a readable PNG or JPEG image"),
    (dict(model="/no/such/model"), "model: no such directory"),
])
def test_bad_input_exits_2_with_one_line(images, tmp_path, change, expected):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    prompt = "a b c d e man" if change.get("many") else "A man"
    args = ["generate", "--prompt", prompt, "--output", str(tmp_path / "x.mp4"),
            "--num-frames", change.get("frames", "9"), "--height", change.get("height", "64"),
            "--width", change.get("width", "64")]
    if "model" in change:
        args += ["--model", change["model"]]
    if change.get("many"):
        for word in "abcde":
            args += ["--subject", f"{word}={images}/man.png"]
    elif "subject" in change:
        args += ["--subject", change["subject"].format(images=images, bad=bad)]
    result = polyvivid(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("polyvivid: error: ") and expected in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.mp4").exists()


def test_help_explains_every_option():
    result = polyvivid("generate", "--help")
    assert result.returncode == 0
    for option in ("--prompt", "--subject", "--model", "--preset", "--num-frames", "--height", "--width",
                   "--steps", "--seed", "--output", "--vae-tiling"):
        assert option in result.stdout
    assert polyvivid().returncode == 2


def test_importing_polyvivid_does_not_import_torch():
    code = "import sys, polyvivid, polyvivid.storage, polyvivid.cli; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert result.stdout.strip() == "False", result.stderr
