"""Bad input on the command line: one clear line on stderr, exit 2, no traceback, nothing written; refused
before any model loads. The cases are what an attacker or a typo gives: decompression bombs, damaged
weights, numbers out of range (NaN, beyond int64), manifests that are not manifests, '..' in outputs.

Most cases call `polyvivid.cli.main` in this process (the same code path as the command, and an
exception would fail the test instead of printing a traceback); a few run the real command."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import yaml

from polyvivid.cli import main
from polyvivid.samples import draw_subject

from .specs import with_random_models

TRAINING = {"apiVersion": "polyvivid.io/v1alpha1", "kind": "PolyVividTraining", "metadata": {"name": "t"},
            "spec": {"model": {"preset": "tiny"}, "dataset": {"uri": "data"}, "output": "out"}}
CURATION = {"apiVersion": "polyvivid.io/v1alpha1", "kind": "CurationJob", "metadata": {"name": "c"},
            "spec": with_random_models({"input": "raw", "output": "out"})}
MANIFESTS = {"train": TRAINING, "curate": CURATION, "render": TRAINING}


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (no pixel data follows): a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def run(capsys, *argv) -> tuple[int, list[str]]:
    capsys.readouterr()  # only what the command prints
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err.strip().splitlines()


def assert_one_line(code: int, lines: list[str], expected: str) -> None:
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("polyvivid: error: ") and expected in lines[0], lines[0]


@pytest.fixture(scope="module")
def man_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("subjects") / "man.png"
    draw_subject("man").save(path)
    return path


def generate(man_png, tmp_path, *extra):
    return ["generate", "--prompt", "A man waves", "--subject", f"man={man_png}", "--steps", "1",
            "--output", str(tmp_path / "v.mp4"), *extra]


@pytest.mark.parametrize("extra, expected", [
    (("--steps", "0"), "argument --steps: 0 is outside 1..1000"),
    (("--steps", "100000"), "argument --steps: 100000 is outside 1..1000"),
    (("--num-frames", "100001"), "argument --num-frames: 100001 is outside 1..257"),
    (("--num-frames", "10"), "num_frames: must be of the form 4k+1"),
    (("--height", "100000"), "argument --height: 100000 is outside 16..2048"),
    (("--width", "-16"), "argument --width: -16 is outside 16..2048"),
    (("--seed", str(2**64)), f"argument --seed: {2**64} is outside 0..{2**63 - 1}"),
    (("--seed", "-1"), "argument --seed: -1 is outside"),
    (("--guidance", "nan"), "argument --guidance: nan is outside 0..30"),
    (("--guidance", "inf"), "argument --guidance: inf is outside 0..30"),
    (("--true-cfg=-inf",), "argument --true-cfg: -inf is outside 1..30"),
    (("--fps", "0"), "argument --fps: 0 is outside 1..240"),
    (("--steps", "1e3"), "argument --steps: '1e3' is not an integer"),
])
def test_generate_numbers_out_of_range(capsys, man_png, tmp_path, extra, expected):
    assert_one_line(*run(capsys, *generate(man_png, tmp_path, *extra)), expected)
    assert not (tmp_path / "v.mp4").exists()


@pytest.mark.parametrize("size, expected", [((100_000, 100_000), "its header claims more than 16777216 pixels"),
                                            ((5000, 5000), "5000x5000 pixels, at most 16777216 accepted")])
def test_a_decompression_bomb_is_refused_from_its_header(capsys, tmp_path, size, expected):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(*size))
    code, lines = run(capsys, "generate", "--prompt", "A man waves", "--subject", f"man={bomb}",
                      "--output", str(tmp_path / "v.mp4"))
    assert_one_line(code, lines, f"subject 'man': {bomb}: {expected}")


def test_damaged_model_weights_are_one_line(capsys, man_png, tmp_path):
    from polyvivid.model.pipeline import PolyVividPipeline

    pipe = PolyVividPipeline.from_preset("tiny")
    pipe.save_polyvivid(tmp_path / "final", base={"preset": "tiny", "seed": 0})
    weights = tmp_path / "final" / "polyvivid_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code, lines = run(capsys, *generate(man_png, tmp_path, "--model", str(tmp_path / "final")))
    assert_one_line(code, lines, "damaged or unreadable model files (SafetensorError")
    pipe.save_pretrained(tmp_path / "ckpt")
    (shard,) = (tmp_path / "ckpt" / "transformer").glob("*.safetensors")
    shard.write_bytes(b"\x00" * 16)
    code, lines = run(capsys, *generate(man_png, tmp_path, "--model", str(tmp_path / "ckpt")))
    assert code == 2 and len(lines) == 1 and lines[0].startswith("polyvivid: error: model: "), lines
    assert not (tmp_path / "v.mp4").exists()


BILLION_LAUGHS = "\n".join(["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"] +
                           [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)])


@pytest.mark.parametrize("command", ["train", "curate", "render"])
@pytest.mark.parametrize("content, expected", [
    ("directory", "is a directory; give a manifest file"),
    ("/dev/zero", "not a regular file"),
    (BILLION_LAUGHS, "the YAML expands to more than 100000 nodes through its aliases"),
    ("a: [unclosed", "not valid YAML"),
    (b"\xff\xfe bytes", "not UTF-8 text"),
    ("x" * (1024 * 1024 + 10), "larger than 1048576 bytes"),
])
def test_files_that_are_not_manifests(capsys, tmp_path, command, content, expected):
    if content == "directory":
        path = tmp_path
    elif content == "/dev/zero":
        path = Path("/dev/zero")
    else:
        path = tmp_path / "m.yaml"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, lines = run(capsys, command, str(path))
    assert_one_line(code, lines, f"{path}: {expected}")


@pytest.mark.parametrize("command, change, expected", [
    (command, change, expected)
    for command in MANIFESTS
    for change, expected in ((lambda m: m.pop("metadata"), "metadata"),
                             (lambda m: m.update(spek={"typo": 1}), "spek: Extra inputs are not permitted"))
] + [(command, lambda m: m["spec"].update(output="s3://bucket/runs/../../other"), "'..' is not allowed")
     for command in ("train", "curate")])
def test_manifests_without_metadata_or_with_unknown_keys(capsys, tmp_path, command, change, expected):
    manifest = yaml.safe_load(yaml.safe_dump(MANIFESTS[command]))
    change(manifest)
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(manifest))
    code, lines = run(capsys, command, str(path))
    assert code == 2 and len(lines) == 1 and expected in lines[0], lines


@pytest.mark.parametrize("argv", [
    ["generate", "--prompt", "A man", "--output", "out/../../etc/v.mp4"],
    ["generate", "--prompt", "A man", "--output", "s3://bucket/videos/../../v.mp4"],
    ["train", "spec.yaml", "--output", "s3://bucket/runs/../x"],
    ["curate", "spec.yaml", "--output", "../data"],
    ["serve", "spec.yaml", "--local", "--output", "jobs/.."],
])
def test_outputs_with_dot_dot_are_refused(capsys, argv):
    assert_one_line(*run(capsys, *argv), "'..' is not allowed in an output")


def test_the_real_command_prints_one_line_and_no_traceback(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_claiming(100_000, 100_000))
    result = subprocess.run([sys.executable, "-m", "polyvivid.cli", "generate", "--prompt", "A man waves",
                             "--subject", f"man={tmp_path / 'bomb.png'}", "--output", str(tmp_path / "v.mp4")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("polyvivid: error: subject 'man'")
