"""Avatars: a common image in, a 256x256 JPEG out, drawn anew on the server. Pure and
blocking: run `render_avatar` in a thread.

An upload is never stored or served as it came. Its format is told by its magic
bytes, not its Content-Type; only that format's decoder reads it; the picture is
turned upright, cropped to its centre square, scaled and encoded as a fresh
JPEG that carries no metadata (no EXIF, no ICC profile, no comments). A picture
whose header declares more than MAX_PIXELS is refused before a pixel is decoded:
a few kilobytes of PNG can declare gigapixels.
"""

from __future__ import annotations

import io
import logging

from PIL import Image, ImageOps

log = logging.getLogger(__name__)

SIZE = 256
MAX_BYTES = 5 * 1024 * 1024
MAX_PIXELS = 40_000_000
QUALITY = 85
BACKGROUND = (255, 255, 255)

# Magic bytes -> Pillow's name of the format. WebP is RIFF....WEBP (checked apart).
SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
)
SNIFF_BYTES = 12


class ImageRejected(Exception):
    """The bytes are not an image this server takes; `code` and message for the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def sniff_image(head: bytes) -> str | None:
    """The format named by an image's first bytes (JPEG, PNG, GIF, WEBP), else None."""
    for magic, name in SIGNATURES:
        if head.startswith(magic):
            return name
    if len(head) >= SNIFF_BYTES and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def too_many_pixels(width: int, height: int) -> bool:
    return width < 1 or height < 1 or width * height > MAX_PIXELS


def render_avatar(data: bytes) -> bytes:
    """The avatar JPEG made from uploaded bytes; ImageRejected for anything else."""
    fmt = sniff_image(data[:SNIFF_BYTES])
    if fmt is None:
        raise ImageRejected("unsupported_media_type",
                            "The body is not a JPEG, PNG, WebP or GIF image")
    try:
        return _render(data, fmt)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_large() from None
    except MemoryError:
        raise _too_large() from None
    except Exception as exc:
        # Whatever a decoder raises on hostile or broken bytes, the client sent them.
        log.debug("avatar not decoded: %r", exc)
        raise ImageRejected("invalid_image",
                            "The image could not be decoded (damaged or truncated?)") from None


def _too_large() -> ImageRejected:
    return ImageRejected("image_too_large",
                         f"The image has more than {MAX_PIXELS} pixels")


def _render(data: bytes, fmt: str) -> bytes:
    with Image.open(io.BytesIO(data), formats=[fmt]) as opened:
        # Only the header has been read so far.
        if too_many_pixels(*opened.size):
            raise _too_large()
        if fmt == "JPEG":
            # Decode at the smallest scale (1/2 .. 1/8) that still covers the avatar.
            opened.draft("RGB", (SIZE, SIZE))
        upright = ImageOps.exif_transpose(opened)
        flat = _flatten(upright)
    square = ImageOps.fit(flat, (SIZE, SIZE), Image.Resampling.LANCZOS, centering=(0.5, 0.5))
    # What the upload carried besides pixels (comment, ICC profile, EXIF, DPI) would
    # otherwise be written out again.
    square.info.clear()
    out = io.BytesIO()
    square.save(out, "JPEG", quality=QUALITY, optimize=True)
    return out.getvalue()


def _flatten(image: Image.Image) -> Image.Image:
    """RGB, with any transparency laid over a white background."""
    if image.mode in ("RGBA", "LA", "PA") or (
            image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # High bit depth greys: scale to 8 bits before colour conversion.
        image = image.point(lambda v: v / 256).convert("L")
    return image.convert("RGB")
