"""Decoding one image safely: bounded in size, any common format and mode in, RGB out.

Ingest stores, and prediction sees, exactly what `prepare` returns: the image decoded,
turned upright by its EXIF orientation, converted to RGB and shrunk to at most
`STORED_MAX_SIDE` pixels on its long side. Files come from users of a shared instance,
so every size is checked before any pixel is decoded.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from .errors import DatasetError, SpecError

STORED_MAX_SIDE = 512
# The default; $TL_MAX_IMAGE_PIXELS overrides it. The environment is read at each call
# (see `max_image_pixels`), so a server's setting applies without a reload and a typo
# in it is reported where it matters instead of breaking every import.
MAX_IMAGE_PIXELS = 50_000_000

# Pillow names of the formats we decode. Restricting `Image.open` to these keeps
# Pillow's rarer (and less battle-tested) parsers away from untrusted bytes.
ACCEPTED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")
# What `img.format` may say for those: cameras write JPEGs with a multi-picture
# extension, which Pillow reports as MPO; Windows bitmaps may be DIB.
_ACCEPTED_REPORTED = frozenset(ACCEPTED_FORMATS) | {"MPO", "DIB"}
_CONVERT_HINT = "convert it to JPEG or PNG"

# Containers Pillow has no plugin for, recognised by their signature so the message
# can say what the file is (iPhones save HEIC by default).
_FOREIGN_SIGNATURES = (
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypheix", "HEIC"),
    (4, b"ftypmif1", "HEIF"),
    (4, b"ftypavif", "AVIF"),
    (0, b"%PDF", "PDF"),
    (0, b"<svg", "SVG"),
    (0, b"<?xml", "SVG/XML"),
)

_ORIENTATION_TAG = ExifTags.Base.Orientation
# Orientations 5-8 include a quarter turn, so width and height trade places.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})


class ImageRejected(DatasetError):
    """One file cannot be used as an image; `reason` says why in plain words."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason

    def __reduce__(self):  # keeps the two fields when sent to or from a worker process
        return (type(self), (self.name, self.reason))


@dataclass(frozen=True)
class Prepared:
    """An image as stored: RGB, upright, shrunk; with the size of the original."""

    image: Image.Image
    original_width: int  # after EXIF rotation, before shrinking
    original_height: int
    format: str


def max_image_pixels() -> int:
    """The pixel limit in force: $TL_MAX_IMAGE_PIXELS, else MAX_IMAGE_PIXELS."""
    return env_int("TL_MAX_IMAGE_PIXELS", MAX_IMAGE_PIXELS)


def env_int(variable: str, default: int) -> int:
    """A positive whole number from the environment, or `default` when unset."""
    value = os.environ.get(variable, "").strip().replace("_", "")
    if not value:
        return int(default)
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise SpecError(f"{variable} must be a positive whole number, not {value!r}")
    return number


def open_rgb(data: bytes, name: str) -> Image.Image:
    """Decode `data` to a full-size, upright RGB image, or raise ImageRejected."""
    image, _, _ = _decode(data, name, draft_side=None)
    return image


def shrink(img: Image.Image, max_side: int = STORED_MAX_SIDE) -> Image.Image:
    """Downscale so the long side is at most `max_side`, keeping the aspect; never upscale."""
    width, height = img.size
    long_side = max(width, height)
    if long_side <= max_side:
        return img
    scale = max_side / long_side
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # reducing_gap lets Pillow first reduce by an integer factor (cheap box filter), then
    # finish with Lanczos; visually indistinguishable and several times faster on photos.
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def to_jpeg_bytes(img: Image.Image, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def prepare(data: bytes, name: str, max_side: int = STORED_MAX_SIDE) -> Prepared:
    """Decode, rotate, convert and shrink: exactly the pixels ingest stores."""
    image, (width, height), fmt = _decode(data, name, draft_side=max_side)
    return Prepared(shrink(image, max_side), width, height, fmt)


def load_rgb_array(
    source: str | os.PathLike[str] | bytes,
    name: str | None = None,
    max_side: int = STORED_MAX_SIDE,
) -> np.ndarray:
    """An image file (path or bytes) as a uint8 (H, W, 3) array, prepared as ingest does."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        label = name or "image"
    else:
        path = Path(source)
        label = name or path.name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageRejected(label, f"cannot read the file ({exc.strerror or exc})") from exc
    prepared = prepare(data, label, max_side)
    return np.array(prepared.image, dtype=np.uint8)


# --- internals ---------------------------------------------------------------------


def _decode(
    data: bytes, name: str, draft_side: int | None
) -> tuple[Image.Image, tuple[int, int], str]:
    """The upright RGB image, the original (rotated) size and the format.

    With `draft_side`, JPEGs are decoded with DCT scaling to no less than that size on
    each side: 4-8x faster for camera photos, and the caller shrinks further anyway.
    """
    limit = max_image_pixels()  # outside the try: a bad setting is not a bad image
    if not data:
        raise ImageRejected(name, "the file is empty")
    try:
        img = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:
        # Pillow's own hard limit (twice Image.MAX_IMAGE_PIXELS) fired while reading the
        # header; its message carries the pixel count.
        raise ImageRejected(
            name,
            f"image is too large to decode safely: {exc} (our limit: "
            f"{limit:,} pixels, TL_MAX_IMAGE_PIXELS)",
        ) from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageRejected(name, _unidentified_reason(data)) from exc
    except Exception as exc:  # Pillow's parsers raise many types on malformed headers
        raise ImageRejected(name, f"not a readable image: the header is damaged ({exc})") from exc

    try:
        if img.format not in _ACCEPTED_REPORTED:
            raise ImageRejected(name, f"{img.format} images are not accepted: {_CONVERT_HINT}")
        width, height = img.size
        _check_pixels(name, width, height, limit)
        orientation = _orientation(img)
        if draft_side and img.format in ("JPEG", "MPO"):
            img.draft(None, (draft_side, draft_side))
        try:
            img.load()
        except Exception as exc:  # truncated data, bad Huffman tables, zlib errors, ...
            raise ImageRejected(name, _damaged_reason(exc)) from exc
        if orientation in _QUARTER_TURNS:
            width, height = height, width
        img = _upright(img, orientation)
        rgb = _to_rgb(img, name)
        return rgb, (width, height), str(img.format or "")
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected(name, f"image is too large to decode safely: {exc}") from exc
    except Exception as exc:  # conversions on hostile data; never crash the whole ingest
        raise ImageRejected(name, f"not a readable image ({type(exc).__name__}: {exc})") from exc


def _check_pixels(name: str, width: int, height: int, limit: int) -> None:
    # Pillow warns (and we would decode) above its own soft limit; treating that limit
    # as a ceiling too means its DecompressionBombWarning never has to be caught, which
    # `warnings.catch_warnings` cannot do safely from the ingest thread pool.
    pillow_limit = Image.MAX_IMAGE_PIXELS
    if pillow_limit:
        limit = min(limit, int(pillow_limit))
    pixels = width * height
    if pixels > limit:
        raise ImageRejected(
            name,
            f"image is {width:,} x {height:,} = {pixels:,} pixels, over the limit of "
            f"{limit:,} pixels (a possible decompression bomb; raise TL_MAX_IMAGE_PIXELS "
            f"if it is genuine, or downscale it)",
        )


def _orientation(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # a damaged EXIF block should not cost the image itself
        return 1
    return value if 1 <= value <= 8 else 1


def _upright(img: Image.Image, orientation: int) -> Image.Image:
    if orientation == 1:
        return img
    try:
        upright = ImageOps.exif_transpose(img)
    except Exception:
        return img
    return upright if upright is not None else img


def _to_rgb(img: Image.Image, name: str) -> Image.Image:
    mode = img.mode
    if mode == "RGB" and not img.has_transparency_data:
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_depth_to_gray(img).convert("RGB")
    if mode in ("LA", "La", "PA", "RGBA", "RGBa") or img.has_transparency_data:
        # Transparent areas become white, not black: a cut-out product photo on white
        # is what the user sees in any viewer, and black would add a spurious signal.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        # Covers 1, L, P, CMYK (Pillow already undoes Adobe's inverted CMYK JPEGs),
        # YCbCr, RGBX, HSV.
        return img.convert("RGB")
    except ValueError as exc:
        raise ImageRejected(
            name, f"colour mode {mode} cannot be converted to RGB: {_CONVERT_HINT}"
        ) from exc


def _high_depth_to_gray(img: Image.Image) -> Image.Image:
    pixels = np.asarray(img)
    if img.mode.startswith("I;16"):
        # A 16-bit file declares its full scale, so map 0..65535 onto 0..255 for every
        # image alike. Stretching each image to its own range would erase brightness
        # differences between images (which may be what tells classes apart) and blow
        # up the noise of flat images. The cost: 12-bit sensor data stored in 16 bits
        # comes out dark; such data sets should be exported as 8-bit.
        scaled = pixels.astype(np.float32) / 257.0
    else:
        # 32-bit integer ("I") and float ("F") images have no declared full scale, so
        # their actual range is the only meaningful one.
        values = pixels.astype(np.float64)
        finite = values[np.isfinite(values)]
        low = float(finite.min()) if finite.size else 0.0
        high = float(finite.max()) if finite.size else 0.0
        span = high - low
        values = np.nan_to_num(values, nan=low, posinf=high, neginf=low)
        scaled = (values - low) * (255.0 / span) if span > 0 else np.zeros_like(values)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def _unidentified_reason(data: bytes) -> str:
    for offset, signature, kind in _FOREIGN_SIGNATURES:
        if data[offset : offset + len(signature)] == signature:
            return f"{kind} files are not accepted: {_CONVERT_HINT}"
    head = data[:32]
    # Name formats Pillow knows but we do not decode, using only each plugin's
    # signature test: no parser touches the bytes.
    Image.init()
    for fmt, (_, accept) in Image.OPEN.items():
        if fmt in ACCEPTED_FORMATS or accept is None:
            continue
        try:
            if accept(head):
                return f"{fmt} images are not accepted: {_CONVERT_HINT}"
        except Exception:
            continue
    return "not an image file Pillow can read (remove it or convert it to JPEG/PNG)"


def _damaged_reason(exc: Exception) -> str:
    text = str(exc)
    if "truncated" in text.lower():
        return "the file is truncated (it ends before the image data does): re-export or remove it"
    return f"the image data is damaged ({text or type(exc).__name__}): re-export or remove it"
