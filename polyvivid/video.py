"""Video files: mp4 through PyAV (bundled FFmpeg with libx264, no system ffmpeg) and contact sheets."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image


def encode_mp4(frames: np.ndarray, fps: int = 24, crf: int = 18) -> bytes:
    """frames [F, H, W, 3] uint8 -> H.264 mp4 bytes (yuv420p, plays everywhere; H and W must be even)."""
    import av

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames [F, H, W, 3], got {frames.dtype} {frames.shape}")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def decode_mp4(data: bytes) -> np.ndarray:
    """mp4 bytes -> frames [F, H, W, 3] uint8."""
    import av

    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def contact_sheet(frames: np.ndarray, columns: int | None = None, gap: int = 2) -> Image.Image:
    """All frames on one image, row by row, for a quick look at a whole clip."""
    count, height, width, _ = frames.shape
    columns = columns or min(count, math.ceil(math.sqrt(count * 16 / 9)))
    rows = math.ceil(count / columns)
    sheet = Image.new("RGB", (columns * (width + gap) - gap, rows * (height + gap) - gap), "white")
    for i, frame in enumerate(frames):
        r, c = divmod(i, columns)
        sheet.paste(Image.fromarray(frame), (c * (width + gap), r * (height + gap)))
    return sheet


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
