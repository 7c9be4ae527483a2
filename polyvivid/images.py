"""Reading images that come from outside (a client's request, a file on the command line, a dataset, a
test set): the format and the size are checked from the header before a pixel is decoded, so a PNG
whose header claims a huge size (a decompression bomb) is refused, not decoded. Torch-free: the HTTP
ingress and the CLI check images without loading a model.
"""

from __future__ import annotations

import io
import os
import warnings

MAX_IMAGE_PIXELS = 4096 * 4096
FORMATS = {"PNG": "png", "JPEG": "jpg"}  # PIL format -> file extension


class ImageRejected(Exception):
    """Not an acceptable image; `too_large` when its size is the reason (HTTP 413 rather than 422)."""

    def __init__(self, message: str, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large


def read_image(source: bytes | str | os.PathLike):
    """(RGB PIL image, extension) of PNG or JPEG bytes or a file; ImageRejected says why not."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # PIL warns above its own limit and raises at twice it; ours is lower and checked first
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                fmt, (width, height) = img.format, img.size
                if fmt not in FORMATS:
                    raise ImageRejected(f"a {fmt} image; send PNG or JPEG")
                if width * height > MAX_IMAGE_PIXELS:
                    raise ImageRejected(f"{width}x{height} pixels, at most {MAX_IMAGE_PIXELS} accepted",
                                        too_large=True)
                img.load()  # a truncated or corrupt file fails here
                return img.convert("RGB"), FORMATS[fmt]
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected(f"its header claims more than {MAX_IMAGE_PIXELS} pixels", too_large=True) from None
    except FileNotFoundError:
        raise ImageRejected("no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageRejected(f"not a readable PNG or JPEG image ({e.__class__.__name__})") from None
