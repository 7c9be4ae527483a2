"""`polyvivid eval-cases` and `polyvivid eval` end to end with tiny random models: a drawn test set,
videos written as mp4, every metric in the report and the table, FVD against the same videos ~0, still
videos fully consistent and moving ones less, missing videos counted, bad input exit 2. (A shuffled
video's lower consistency is checked in test_metrics.py on a video made for it.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

from polyvivid.cli import main
from polyvivid.eval.cases import InvalidCases, read_cases
from polyvivid.video import encode_mp4


def case_video(case, frames: int = 9, size: int = 64) -> np.ndarray:
    """The case's two subjects, one above the other, passing each other (3 px a frame): a stand-in
    for a generated video."""
    half = size // 2
    images = [np.asarray(case.image(s).resize((half, half))) for s in case.subjects]
    video = []
    for t in range(frames):
        frame = np.full((size, size, 3), 90, dtype=np.uint8)
        for k, image in enumerate(images):
            x = 3 * t if k == 0 else half - 3 * t
            frame[k * half:(k + 1) * half, x:x + half] = image
        video.append(frame)
    return np.stack(video)


@pytest.fixture
def test_set(tmp_path):
    assert main(["eval-cases", "--drawn", "--out", str(tmp_path / "set" / "cases.jsonl"), "--count", "3"]) == 0
    cases = read_cases(str(tmp_path / "set" / "cases.jsonl"))
    videos, still = tmp_path / "videos", tmp_path / "still"
    videos.mkdir()
    still.mkdir()
    for case in cases:
        frames = case_video(case)
        (videos / f"{case.id}.mp4").write_bytes(encode_mp4(frames, fps=8))
        (still / f"{case.id}.mp4").write_bytes(encode_mp4(np.repeat(frames[:1], len(frames), axis=0), fps=8))
    return tmp_path, cases


def test_eval_reports_every_metric_and_prints_the_table(test_set, capsys):
    root, cases = test_set
    out = root / "report.json"
    assert main(["eval", "--videos", str(root / "videos"), "--cases", str(root / "set" / "cases.jsonl"),
                 "--preset", "tiny", "--real-videos", str(root / "videos"), "--max-frames", "4",
                 "--label", "PolyVivid (tiny)", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for title in ("Face-sim", "DINO-sim", "CLIP-B", "CLIP-L", "Temporal", "FVD", "PolyVivid (tiny)"):
        assert title in printed
    assert "3/3 cases scored" in printed
    report = json.loads(out.read_text())
    m = report["metrics"]
    assert set(m) == {"face_sim", "dino_sim", "clip_b", "clip_l", "temporal_consistency", "fvd"}
    assert m["fvd"] == pytest.approx(0.0, abs=1e-3)  # the same videos on both sides
    assert report["fvd_features"] == "clip" and len(report["cases"]) == 3
    humans = [c for c in cases if any(s.kind == "human" for s in c.subjects)]
    assert humans and m["face_sim"] is not None and -1 <= m["face_sim"] <= 1
    assert report["counts"]["frames_without_face"] >= 0 and report["counts"]["videos_missing"] == []
    subjects = sum(s.kind != "human" for c in cases for s in c.subjects)
    assert report["counts"]["subject_frames"] == 4 * subjects  # --max-frames 4 per non-human subject
    assert 0 <= report["counts"]["frames_without_subject"] <= report["counts"]["subject_frames"]
    # --compare adds earlier reports as rows; still videos are more consistent than moving ones
    for name in ("videos", "still"):
        assert main(["eval", "--videos", str(root / name), "--cases", str(root / "set" / "cases.jsonl"),
                     "--preset", "tiny", "--metrics", "temporal,clip-b", "--label", name,
                     "--compare", str(out), "--out", str(root / f"{name}.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = lines[max(i for i, line in enumerate(lines) if line.startswith("Method")):]  # the second run's
    assert table[2].startswith("PolyVivid (tiny)") and table[3].startswith("still")
    moving, still = (json.loads((root / f"{n}.json").read_text())["metrics"] for n in ("videos", "still"))
    assert still["temporal_consistency"] == pytest.approx(1.0, abs=1e-3)
    assert moving["temporal_consistency"] < still["temporal_consistency"]


def test_missing_videos_are_counted_and_no_videos_is_an_error(test_set, capsys):
    root, cases = test_set
    (root / "videos" / f"{cases[0].id}.mp4").unlink()
    assert main(["eval", "--videos", str(root / "videos"), "--cases", str(root / "set" / "cases.jsonl"),
                 "--preset", "tiny", "--metrics", "clip-b", "--out", str(root / "r.json")]) == 0
    report = json.loads((root / "r.json").read_text())
    assert report["counts"]["videos_missing"] == [cases[0].id] and report["counts"]["videos"] == 2
    assert f"missing videos: {cases[0].id}" in capsys.readouterr().out
    (root / "empty").mkdir()
    assert main(["eval", "--videos", str(root / "empty"), "--cases", str(root / "set" / "cases.jsonl"),
                 "--preset", "tiny", "--metrics", "clip-b"]) == 2
    assert "no videos found" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--metrics", "clip-b,sharpness"], "--metrics: unknown sharpness"),
    (["--metrics", "clip-l"], "metric 'clip-l' needs --clip-l"),
    (["--metrics", "face"], "needs --face-detector, --face-embedder"),
    (["--metrics", "fvd"], "needs --clip-b"),
    (["--metrics", "clip-b", "--clip-b", "/no/such/clip"], "--clip-b: no such file or directory: /no/such/clip"),
])
def test_bad_input_exits_2_with_one_line(test_set, capsys, argv, message):
    root, _ = test_set
    code = main(["eval", "--videos", str(root / "videos"), "--cases", str(root / "set" / "cases.jsonl"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_cases_files_are_checked(tmp_path):
    bad = tmp_path / "cases.jsonl"
    bad.write_text(json.dumps({"id": "a", "prompt": "A man rides", "subjects": [{"name": "horse", "image": "h.png"}]}))
    with pytest.raises(InvalidCases, match="line 1: subjects\\[0\\].name 'horse' does not appear in the prompt"):
        read_cases(str(bad))
    bad.write_text('{"id": "a", "prompt": "A man", "subjects": [{"name": "man", "image": "m.png", "kind": "robot"}]}\n')
    with pytest.raises(InvalidCases, match="kind must be one of human, animal, object"):
        read_cases(str(bad))
    line = {"id": "a", "prompt": "A man", "subjects": [{"name": "man", "image": "m.png"}]}
    bad.write_text(json.dumps(line) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(InvalidCases, match="line 2: id 'a' appears twice"):
        read_cases(str(bad))


def test_the_builder_covers_the_pair_types_and_is_deterministic(tmp_path):
    from polyvivid.eval.cases import build_cases

    library = {"human": [("man", "h/man.png"), ("woman", "h/woman.png")], "animal": [("dog", "a/dog.png")],
               "object": [("guitar", "o/guitar.png"), ("ball", "o/ball.png")]}
    cases = build_cases(library, count=100, seed=3)
    assert len(cases) == 100 and len({c.id for c in cases}) == 100
    pairs = {tuple(s.kind for s in c.subjects) for c in cases}
    assert pairs == {("human", "object"), ("human", "animal"), ("human", "human"), ("animal", "object")}
    assert all(c.subjects[0].name != c.subjects[1].name for c in cases)
    assert [c.to_json() for c in build_cases(library, count=100, seed=3)] == [c.to_json() for c in cases]
    assert [c.prompt for c in build_cases(library, count=100, seed=4)] != [c.prompt for c in cases]


def test_eval_with_a_model_generates_the_missing_videos_first(test_set, capsys):
    root, cases = test_set
    videos = root / "generated"
    args = ["eval", "--videos", str(videos), "--cases", str(root / "set" / "cases.jsonl"), "--model", "tiny",
            "--num-frames", "5", "--height", "32", "--width", "32", "--steps", "2", "--preset", "tiny",
            "--metrics", "clip-b,temporal", "--out", str(root / "g.json")]
    assert main(args) == 0
    assert "generated 3 videos" in capsys.readouterr().out
    assert sorted(p.name for p in videos.iterdir()) == [f"{c.id}.mp4" for c in cases]
    assert json.loads((root / "g.json").read_text())["counts"]["videos"] == 3
    assert main(args) == 0  # a second run generates nothing again
    assert "generated 0 videos" in capsys.readouterr().out
    assert main([*args[:-2], "--model", str(root / "nowhere")]) == 2
    assert "--model:" in capsys.readouterr().err
