"""Decoding single images: formats, modes, EXIF rotation, damaged files, size limits."""

from __future__ import annotations

import io
import pickle
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tl_engine.errors import DatasetError, SpecError
from tl_engine.images import (
    STORED_MAX_SIDE,
    ImageRejected,
    header_size,
    load_rgb_array,
    open_rgb,
    prepare,
    shrink,
    to_jpeg_bytes,
)

RED = (220, 20, 20)
BLUE = (20, 20, 220)


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def close(pixel, expected, tolerance: int = 12) -> bool:
    return all(abs(int(a) - int(b)) <= tolerance for a, b in zip(pixel, expected, strict=True))


def png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height`: what a decompression bomb looks like."""
    data = bytearray(encode(Image.new("L", (8, 8), 0), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF"])
def test_every_accepted_format_decodes_to_rgb(fmt: str) -> None:
    img = Image.new("RGB", (48, 24), RED)
    decoded = open_rgb(encode(img, fmt), f"red.{fmt.lower()}")
    assert decoded.mode == "RGB"
    assert decoded.size == (48, 24)
    assert close(decoded.getpixel((10, 10)), RED)


@pytest.mark.bad_input
@pytest.mark.parametrize(("fmt", "options"), [("PPM", {}), ("ICO", {}), ("PCX", {})])
def test_formats_outside_the_list_are_rejected_by_name(fmt: str, options: dict) -> None:
    data = encode(Image.new("RGB", (16, 16), RED), fmt, **options)
    with pytest.raises(ImageRejected) as caught:
        open_rgb(data, "odd.jpg")
    assert caught.value.name == "odd.jpg"
    assert fmt in caught.value.reason
    assert "JPEG or PNG" in caught.value.reason


@pytest.mark.bad_input
def test_heic_is_named_in_the_reason() -> None:
    data = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    with pytest.raises(ImageRejected, match="HEIC files are not accepted"):
        open_rgb(data, "IMG_0001.HEIC")


@pytest.mark.bad_input
def test_text_file_named_jpg_is_rejected_with_a_plain_message() -> None:
    with pytest.raises(ImageRejected) as caught:
        open_rgb(b"just some notes, not a picture\n", "bees/x.jpg")
    assert str(caught.value) == (
        "bees/x.jpg: not an image file Pillow can read (remove it or convert it to JPEG/PNG)"
    )
    assert isinstance(caught.value, DatasetError)


@pytest.mark.bad_input
def test_empty_file_is_rejected() -> None:
    with pytest.raises(ImageRejected, match="empty"):
        open_rgb(b"", "zero.png")


@pytest.mark.bad_input
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_is_rejected(fmt: str) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), fmt)
    with pytest.raises(ImageRejected, match="truncated"):
        open_rgb(data[: len(data) // 2], f"cut.{fmt.lower()}")


def test_exif_orientation_turns_the_image_upright() -> None:
    # Stored sideways: red on the left third. Orientation 6 means "rotate 90 degrees
    # clockwise to display", so upright the red part is at the top.
    img = Image.new("RGB", (60, 30), BLUE)
    img.paste(RED, (0, 0, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(img, "JPEG", exif=exif, quality=95)

    upright = open_rgb(data, "phone.jpg")
    assert upright.size == (30, 60)
    assert close(upright.getpixel((15, 5)), RED, 30)
    assert close(upright.getpixel((15, 55)), BLUE, 30)
    prepared = prepare(data, "phone.jpg")
    assert (prepared.original_width, prepared.original_height) == (30, 60)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_jpeg_header_gives_the_size_prepare_reports(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.new("RGB", (60, 30), BLUE), "JPEG", exif=exif)
    prepared = prepare(data, "phone.jpg")
    assert header_size(data, "phone.jpg") == (prepared.original_width,
                                              prepared.original_height)


def test_only_a_jpeg_header_is_read_for_its_size(monkeypatch: pytest.MonkeyPatch) -> None:
    # A PNG's EXIF block may follow its pixels: its size is left to a full decode.
    assert header_size(encode(Image.new("RGB", (8, 8)), "PNG"), "a.png") is None
    assert header_size(b"not an image", "a.jpg") is None
    monkeypatch.setenv("TL_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(ImageRejected, match="1,800 pixels, over the limit of 1,000"):
        header_size(encode(Image.new("RGB", (60, 30)), "JPEG"), "wide.jpg")


def test_cmyk_jpeg_converts_to_matching_rgb() -> None:
    cmyk = Image.new("RGB", (16, 16), RED).convert("CMYK")
    decoded = open_rgb(encode(cmyk, "JPEG", quality=95), "print.jpg")
    assert decoded.mode == "RGB"
    assert close(decoded.getpixel((8, 8)), RED, 16)


def test_sixteen_bit_grayscale_is_scaled_by_its_full_range() -> None:
    values = np.array([[0, 65535, 32896, 4095]], dtype=np.uint16).repeat(4, axis=0)
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    decoded = open_rgb(encode(img, "PNG"), "scan16.png")
    row = np.asarray(decoded)[0]
    assert decoded.mode == "RGB"
    assert row[:, 0].tolist() == [0, 255, 128, 16]  # 4095 (12-bit white) stays dark, by design
    assert (row[:, 0] == row[:, 1]).all() and (row[:, 1] == row[:, 2]).all()


def test_sixteen_bit_big_endian_tiff() -> None:
    values = np.array([[0, 65535]], dtype=">u2").repeat(2, axis=0)
    img = Image.frombytes("I;16B", (2, 2), values.tobytes())
    decoded = open_rgb(encode(img, "TIFF"), "scan16.tif")
    assert np.asarray(decoded)[0, :, 0].tolist() == [0, 255]


@pytest.mark.parametrize(("dtype", "mode"), [(np.int32, "I"), (np.float32, "F")])
def test_int32_and_float_images_are_stretched_over_their_range(dtype, mode: str) -> None:
    values = np.array([[-1000, 0, 1000]], dtype=dtype).repeat(3, axis=0)
    img = Image.fromarray(values)
    assert img.mode == mode
    decoded = open_rgb(encode(img, "TIFF"), f"data_{mode}.tif")
    assert np.asarray(decoded)[0, :, 0].tolist() == [0, 128, 255]


def test_grayscale_and_one_bit_become_rgb() -> None:
    gray = open_rgb(encode(Image.new("L", (8, 8), 77), "PNG"), "gray.png")
    assert gray.mode == "RGB" and gray.getpixel((0, 0)) == (77, 77, 77)
    bits = Image.new("1", (8, 8), 0)
    bits.putpixel((1, 1), 1)
    decoded = open_rgb(encode(bits, "PNG"), "bits.png")
    assert decoded.getpixel((0, 0)) == (0, 0, 0)
    assert decoded.getpixel((1, 1)) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_alpha_is_composited_over_white(mode: str) -> None:
    img = Image.new("RGBA", (4, 1), (0, 0, 0, 0))
    img.putpixel((1, 0), (200, 0, 0, 255))
    img.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black over white: mid gray
    decoded = open_rgb(encode(img.convert(mode), "PNG"), f"cutout_{mode}.png")
    pixels = [decoded.getpixel((x, 0)) for x in range(3)]
    assert pixels[0] == (255, 255, 255)
    assert close(pixels[1], (200, 0, 0) if mode == "RGBA" else (60, 60, 60), 3)
    assert close(pixels[2], (127, 127, 127), 2)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_becomes_white(fmt: str) -> None:
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 200, 0, 0] + [0, 0, 0] * 254)
    img.putpixel((0, 0), 0)
    decoded = open_rgb(encode(img, fmt, transparency=0), f"palette.{fmt.lower()}")
    assert decoded.getpixel((0, 0)) == (255, 255, 255)
    assert decoded.getpixel((2, 2)) == (200, 0, 0)


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, BLUE, (20, 220, 20))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    decoded = open_rgb(data, "anim.gif")
    assert close(decoded.getpixel((8, 8)), RED)


@pytest.mark.bad_input
def test_pixel_limit_names_the_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TL_MAX_IMAGE_PIXELS", "10000")
    data = encode(Image.new("RGB", (200, 100), RED), "PNG")
    with pytest.raises(ImageRejected) as caught:
        open_rgb(data, "wide.png")
    assert "20,000 pixels" in caught.value.reason
    assert "10,000" in caught.value.reason


def test_a_mistyped_pixel_limit_is_a_setting_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TL_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(SpecError, match="TL_MAX_IMAGE_PIXELS must be a positive whole number"):
        open_rgb(encode(Image.new("RGB", (4, 4)), "PNG"), "fine.png")


@pytest.mark.bad_input
def test_declared_size_is_checked_before_decoding() -> None:
    # 9000 x 9000 = 81M pixels: above our 50M default, below Pillow's own warning level.
    # The file holds 8 x 8 pixels, so a decode attempt would report truncation instead.
    with pytest.raises(ImageRejected) as caught:
        open_rgb(png_with_declared_size(9000, 9000), "bomb.png")
    assert "81,000,000 pixels" in caught.value.reason
    assert "50,000,000" in caught.value.reason


@pytest.mark.bad_input
def test_pillow_decompression_bomb_error_becomes_rejection() -> None:
    with pytest.raises(ImageRejected) as caught:
        open_rgb(png_with_declared_size(100_000, 100_000), "huge.png")
    assert caught.value.reason == (
        "image is 10,000,000,000 pixels, over twice the limit of 50,000,000 pixels (a "
        "possible decompression bomb; raise TL_MAX_IMAGE_PIXELS if it is genuine, or "
        "downscale it)")


@pytest.mark.bad_input
def test_the_pixel_limit_is_one_limit_said_once(tmp_path: Path) -> None:
    """Over Pillow's own warning level (89M) and under its hard stop: one message, ours,
    and no Pillow warning on stderr."""
    folder = tmp_path / "data"
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        (folder / label / "ok.png").write_bytes(encode(Image.new("RGB", (8, 8), RED), "PNG"))
    (folder / "a" / "big.png").write_bytes(png_with_declared_size(9500, 9500))
    checked = subprocess.run([sys.executable, "-m", "tl_engine", "check-data", "--data",
                              str(folder)], capture_output=True, text=True, timeout=120,
                             cwd=Path(__file__).resolve().parent.parent)
    assert "a/big.png: image is 9,500 x 9,500 = 90,250,000 pixels, over the limit of " \
           "50,000,000 pixels" in checked.stdout
    assert "Warning" not in checked.stderr, checked.stderr


def test_rejection_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(ImageRejected("a/b.jpg", "damaged")))
    assert (error.name, error.reason, str(error)) == ("a/b.jpg", "damaged", "a/b.jpg: damaged")


def test_shrink_keeps_aspect_and_never_upscales() -> None:
    big = Image.new("RGB", (1000, 500), RED)
    small = shrink(big)
    assert small.size == (STORED_MAX_SIDE, 256)
    assert shrink(big, max_side=100).size == (100, 50)
    tiny = Image.new("RGB", (100, 40), RED)
    assert shrink(tiny) is tiny
    assert shrink(Image.new("RGB", (3, 2000))).size == (1, 512)


def test_to_jpeg_bytes_round_trips() -> None:
    img = Image.new("RGB", (30, 20), BLUE)
    data = to_jpeg_bytes(img)
    reopened = Image.open(io.BytesIO(data))
    assert reopened.format == "JPEG" and reopened.size == (30, 20)
    assert close(reopened.convert("RGB").getpixel((5, 5)), BLUE, 4)


def test_load_rgb_array_matches_what_ingest_stores(tmp_path) -> None:
    noise = np.random.default_rng(3).integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise).resize((1600, 1200)), "JPEG", quality=90)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)

    from_path = load_rgb_array(path)
    from_bytes = load_rgb_array(data, name="photo.jpg")
    assert from_path.dtype == np.uint8 and from_path.shape == (384, 512, 3)
    assert np.array_equal(from_path, from_bytes)
    assert np.array_equal(from_path, np.asarray(prepare(data, "photo.jpg").image))
    # The fast JPEG path (DCT scaling) stays close to a full decode followed by shrink.
    reference = np.asarray(shrink(open_rgb(data, "photo.jpg")), dtype=np.int16)
    assert np.abs(reference - from_path.astype(np.int16)).mean() < 25
    assert load_rgb_array(path, max_side=64).shape == (48, 64, 3)


def test_load_rgb_array_of_a_missing_file_is_a_rejection(tmp_path) -> None:
    with pytest.raises(ImageRejected, match="cannot read"):
        load_rgb_array(tmp_path / "nope.jpg")
