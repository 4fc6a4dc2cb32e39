"""Decoding one image safely: bounded in size, any common format and mode in, RGB out.

Ingest stores, and prediction sees, exactly what `prepare` returns: the image decoded,
turned upright by its EXIF orientation, converted to RGB and shrunk to at most
`STORED_MAX_SIDE` pixels on its long side. Files come from users of a shared instance,
so every size is checked before any pixel is decoded.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image

from .image_limits import (
    ImageRejected,
    MemoryBudget,
    decode_budget_bytes,
    max_image_pixels,
)

# Every image is checked against the pixel limit from its header, with a message naming it
# (see _check_pixels): Pillow's warning for the same is noise on a command's stderr.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

STORED_MAX_SIDE = 512
# Pillow allocates image memory in blocks, 16 MB by default. glibc serves blocks that
# size from per-thread arenas that keep the memory once the image is freed, so threads
# decoding large images one after another would each keep hundreds of MB. Blocks of 64 MB
# lie above glibc's mmap ceiling (32 MB) and go back to the system when freed. Smaller
# images still get only the memory they need. $PILLOW_BLOCK_SIZE, when set, wins.
_PILLOW_BLOCK_BYTES = 64 * 1024**2
if "PILLOW_BLOCK_SIZE" not in os.environ:
    Image.core.set_block_size(_PILLOW_BLOCK_BYTES)
# Working bytes per pixel while shrinking: the decoded image (up to 4 bytes a pixel) and
# one same-sized copy (premultiplied alpha, a palette expanded, 16 bits widened).
_SHRINK_BYTES_PER_PIXEL = 8
# Kept full size, an RGBA image is decoded, composited over white and converted to RGB.
_FULL_SIZE_BYTES_PER_PIXEL = 16

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

_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_REDUCING_GAP = 3.0

_ORIENTATION_TAG = ExifTags.Base.Orientation
# Orientations 5-8 include a quarter turn, so width and height trade places.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})
# What turns each EXIF orientation upright (as ImageOps.exif_transpose does).
_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class Prepared:
    """An image as stored: RGB, upright, shrunk; with the size of the original."""

    image: Image.Image
    original_width: int  # after EXIF rotation, before shrinking
    original_height: int
    format: str


_DECODING = MemoryBudget()


def open_rgb(data: bytes, name: str) -> Image.Image:
    """Decode `data` to a full-size, upright RGB image, or raise ImageRejected."""
    image, _, _ = _decode(data, name, max_side=None)
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
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=_REDUCING_GAP)


def to_jpeg_bytes(img: Image.Image, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def prepare(data: bytes, name: str, max_side: int | None = STORED_MAX_SIDE) -> Prepared:
    """Decode, rotate, convert and shrink: exactly the pixels ingest stores."""
    image, (width, height), fmt = _decode(data, name, max_side=max_side)
    return Prepared(image, width, height, fmt)


def header_size(data: bytes, name: str) -> tuple[int, int] | None:
    """The upright size `prepare` reports for a JPEG, read from its header without decoding
    a pixel; None for other formats, whose EXIF may follow the pixels. The pixel limit in
    force is checked as `prepare` checks it (ImageRejected above it)."""
    limit = max_image_pixels()
    try:
        img = Image.open(io.BytesIO(data), formats=("JPEG",))
    except Exception:  # not a JPEG, or a header `prepare` would judge: let it
        return None
    with img:
        if img.format not in ("JPEG", "MPO"):
            return None
        width, height = img.size
        _check_pixels(name, width, height, limit)
        if _orientation(img) in _QUARTER_TURNS:
            width, height = height, width
    return width, height


def load_rgb_array(
    source: str | os.PathLike[str] | bytes,
    name: str | None = None,
    max_side: int | None = STORED_MAX_SIDE,
) -> np.ndarray:
    """An image file (path or bytes) as a uint8 (H, W, 3) array, prepared as ingest does;
    `max_side` None keeps the image's own size."""
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
    data: bytes, name: str, max_side: int | None
) -> tuple[Image.Image, tuple[int, int], str]:
    """The upright RGB image (shrunk to `max_side` when given), the original (rotated)
    size and the format.

    Decoding waits for its share of the process's decode budget, so large images decode
    one at a time. With `max_side`, JPEGs are decoded with DCT scaling to no less than that
    size on each side, and other formats are reduced by a whole factor right after decoding,
    before any mode conversion, so no full-size copy is ever made.
    """
    limit = max_image_pixels()  # outside the try: a bad setting is not a bad image
    budget = decode_budget_bytes()
    if not data:
        raise ImageRejected(name, "the file is empty")
    # Pillow's own check follows ours: its hard stop at twice the limit, ours (with the
    # size in the message) at the limit. A raised TL_MAX_IMAGE_PIXELS is then honoured,
    # and Pillow's warning between the two is redundant (filtered at import).
    Image.MAX_IMAGE_PIXELS = limit
    try:
        img = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)):,} pixels, " if found else ""
        raise ImageRejected(
            name,
            f"image is {size}over twice the limit of {limit:,} pixels (a possible "
            "decompression bomb; raise TL_MAX_IMAGE_PIXELS if it is genuine, or downscale it)",
        ) from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageRejected(name, _unidentified_reason(data)) from exc
    except Exception as exc:  # Pillow's parsers raise many types on malformed headers
        raise ImageRejected(name, f"not a readable image: the header is damaged ({exc})") from exc

    try:
        fmt = str(img.format or "")
        if fmt not in _ACCEPTED_REPORTED:
            raise ImageRejected(name, f"{img.format} images are not accepted: {_CONVERT_HINT}")
        width, height = img.size
        _check_pixels(name, width, height, limit)
        if max_side and fmt in ("JPEG", "MPO"):
            img.draft(None, (max_side, max_side))
        per_pixel = _SHRINK_BYTES_PER_PIXEL if max_side else _FULL_SIZE_BYTES_PER_PIXEL
        cost = img.size[0] * img.size[1] * per_pixel  # after draft: what is decoded
        with _DECODING.hold(cost, budget):
            try:
                img.load()
            except Exception as exc:  # truncated data, bad Huffman tables, zlib errors, ...
                raise ImageRejected(name, _damaged_reason(exc)) from exc
            # Only now: a PNG's EXIF may follow its pixels, and asking for it earlier
            # would make Pillow decode the image outside the budget.
            orientation = _orientation(img)
            sixteen_bit = img.mode.startswith("I;16")
            if max_side:
                img = _reduced(img, max_side)
            img = _upright(img, orientation)
            rgb = _to_rgb(img, name, sixteen_bit)
            del img  # the decoded original goes before the budget is given back
            if max_side:
                rgb = shrink(rgb, max_side)
        if orientation in _QUARTER_TURNS:
            width, height = height, width
        return rgb, (width, height), fmt
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected(name, f"image is too large to decode safely: {exc}") from exc
    except Exception as exc:  # conversions on hostile data; never crash the whole ingest
        raise ImageRejected(name, f"not a readable image ({type(exc).__name__}: {exc})") from exc


def _reduced(img: Image.Image, max_side: int) -> Image.Image:
    """`img` shrunk by the whole factor `shrink` would first apply (its reducing gap), in a
    mode that averages correctly; unchanged when it is not much larger than `max_side`."""
    factor = int(max(img.size) / max_side / _REDUCING_GAP)
    if factor < 2:
        return img
    img = _averageable(img)
    return img.reduce(factor)


def _averageable(img: Image.Image) -> Image.Image:
    """A mode whose pixels can be averaged: palettes are expanded, one-bit becomes gray,
    16-bit widens to 32-bit, and a transparent colour key becomes an alpha channel."""
    mode = img.mode
    if mode.startswith("I;16"):
        return img.convert("I")
    if mode in ("P", "PA"):
        return img.convert("RGBA" if mode == "PA" or img.has_transparency_data else "RGB")
    if mode not in _ALPHA_MODES and img.has_transparency_data:
        return img.convert("RGBA")
    if mode == "1":
        return img.convert("L")
    return img


def _check_pixels(name: str, width: int, height: int, limit: int) -> None:
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
    # By the value read before decoding: a reduced or converted copy has no EXIF block.
    method = _TRANSPOSES.get(orientation)
    return img if method is None else img.transpose(method)


def _to_rgb(img: Image.Image, name: str, sixteen_bit: bool = False) -> Image.Image:
    """RGB pixels; `sixteen_bit` says a 32-bit integer image was widened from 16 bits."""
    mode = img.mode
    if mode == "RGB" and not img.has_transparency_data:
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_depth_to_gray(img, sixteen_bit).convert("RGB")
    if mode in _ALPHA_MODES or img.has_transparency_data:
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


def _high_depth_to_gray(img: Image.Image, sixteen_bit: bool = False) -> Image.Image:
    pixels = np.asarray(img)
    if sixteen_bit or img.mode.startswith("I;16"):
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
