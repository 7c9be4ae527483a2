"""Training reads a window of a clip, scaled by FFmpeg as each frame is decoded (issue 21, item 5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from polyvivid.data.loader import SHORT_CLIP, SampleError, decode_window, pick_frames
from polyvivid.video import encode_mp4


def ramp_clip(frames: int, height: int, width: int) -> np.ndarray:
    """Frame i is a horizontal gradient whose brightness grows with i (which frame it is can be read back)."""
    x = np.linspace(0, 1, width)[None, :, None]
    clip = np.stack([np.broadcast_to(20 + 8 * i + 40 * x, (height, width, 3)) for i in range(frames)])
    return clip.round().astype(np.uint8)


def test_a_window_of_contiguous_frames_scaled_and_centre_cropped(tmp_path):
    clip = ramp_clip(16, 96, 160)  # 5:3, cut to a square
    data = encode_mp4(clip, fps=8)
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    for source in (data, str(path)):  # bytes (from S3) or a local file, streamed
        got = decode_window(source, 5, 32, 32, torch.Generator().manual_seed(3))
        start = int(pick_frames(16, 5, torch.Generator().manual_seed(3))[0])
        assert got.shape == (5, 32, 32, 3) and got.dtype == np.uint8
        # the same frames as the old path: crop the centre 96x96, resize with antialiasing
        crop = torch.from_numpy(clip[start:start + 5, :, 32:128]).permute(0, 3, 1, 2).float()
        expected = F.interpolate(crop, size=(32, 32), mode="bilinear", antialias=True).permute(0, 2, 3, 1)
        assert np.abs(got.astype(float) - expected.numpy()).mean() < 3.0  # H.264 and the filter differ a little
        brightness = got.reshape(5, -1).mean(1)
        assert np.allclose(np.diff(brightness), 8, atol=1.5)  # consecutive frames, none repeated


def test_a_clip_shorter_than_its_manifest_says_is_a_short_clip():
    data = encode_mp4(ramp_clip(7, 32, 32), fps=8)
    assert decode_window(data, 7, 32, 32, torch.Generator()).shape[0] == 7  # the container's own count
    with pytest.raises(SampleError, match=f"^{SHORT_CLIP}: 7 frames, 9 wanted"):
        decode_window(data, 9, 32, 32, torch.Generator(), num_frames=None)
    with pytest.raises(SampleError, match=f"^{SHORT_CLIP}"):
        decode_window(data, 9, 32, 32, torch.Generator(), num_frames=12)  # the manifest is wrong
    with pytest.raises(SampleError, match="undecodable"):
        decode_window(b"\x00\x00 not a video", 5, 32, 32, torch.Generator())
