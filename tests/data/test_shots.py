"""Shot detection and video filters on constructed videos with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from polyvivid.data.shots import (
    black_border_box, clip_ranges, decode_video, detect_shots, has_transition, motion_score, subsample,
)
from polyvivid.data.synthetic import render_clip
from polyvivid.video import encode_mp4


def scene(color, frames=10, size=32, seed=0, moving=True):
    """A textured moving shape on a coloured background (distinct colours -> distinct shots)."""
    rng = np.random.default_rng(seed)
    clip = render_clip([{"shape": "circle", "color": "red", "texture": "striped"}], "gray", size, frames, rng)
    clip = clip.copy()
    background = (clip == clip[0, 0, 0]).all(-1)
    clip[background] = color
    return clip if moving else np.repeat(clip[:1], frames, axis=0)


def test_shots_split_at_cuts():
    video = np.concatenate([scene((20, 60, 200)), scene((230, 210, 40), frames=7), scene((40, 160, 60), frames=12)])
    assert detect_shots(video, threshold=0.3) == [(0, 10), (10, 17), (17, 29)]
    assert detect_shots(video[:10], threshold=0.3) == [(0, 10)]


def test_clip_lengths_are_bounded():
    kept, dropped = clip_ranges([(0, 10), (10, 13), (13, 60)], fps=10, min_seconds=0.5, max_seconds=2.0)
    # a 1 s shot stays, a 0.3 s one is dropped, a 4.7 s shot becomes 2 s + 2 s + a 0.7 s piece
    assert kept == [(0, 10), (13, 33), (33, 53), (53, 60)] and dropped == 1
    kept, dropped = clip_ranges([(0, 10)], fps=10, min_seconds=1.5, max_seconds=2.0)
    assert kept == [] and dropped == 1


def test_black_borders_are_found():
    video = scene((120, 120, 120), frames=4, size=48)
    video[:, :6] = 0
    video[:, -6:] = 0
    video[:, :, :4] = 5
    assert black_border_box(video, threshold=16) == (6, 42, 4, 48)
    assert black_border_box(scene((120, 120, 120), frames=4, size=48), threshold=16) == (0, 48, 0, 48)


def test_static_clips_have_no_motion():
    assert motion_score(scene((100, 100, 100), moving=False)) == 0.0
    from polyvivid.api.curation import FilterSpec

    assert motion_score(scene((100, 100, 100))) > FilterSpec().min_motion


def test_fades_are_transitions_and_plain_shots_are_not():
    shot = scene((30, 90, 200), frames=16)
    assert not has_transition(shot, threshold=0.35)
    fade = (shot.astype(np.float32) * np.linspace(1, 0, 16)[:, None, None, None]).astype(np.uint8)
    assert has_transition(fade, threshold=0.35)


def test_decode_and_subsample(tmp_path):
    video = decode_video(encode_mp4(scene((30, 90, 200), frames=12), fps=24))
    assert video.frames.shape == (12, 32, 32, 3) and video.fps == 24
    assert len(subsample(video.frames, video.fps, 8)) == 4
    assert len(subsample(video.frames, video.fps, 48)) == 12
    with pytest.raises(ValueError, match="undecodable"):
        decode_video(b"\x00\x00\x00\x18ftypmp42 truncated")
