"""A sample dataset generated on the spot, so a fresh instance (or the CLI, or a test) can
be demoed end to end with nothing uploaded and nothing on disk."""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw, ImageFilter

from .datasets import Upload

SHAPES = ("circle", "square", "triangle")


def synthetic_shapes(per_class: int = 30, size: int = 96, seed: int = 0) -> list[Upload]:
    """Circles, squares and triangles in random colours and places: a dataset that needs
    nothing on disk, so a fresh instance can be demoed end to end."""
    rng = random.Random(seed)
    uploads = []
    for label in SHAPES:
        for i in range(per_class):
            background = tuple(rng.randint(170, 255) for _ in range(3))
            colour = tuple(rng.randint(0, 150) for _ in range(3))
            image = Image.new("RGB", (size, size), background)
            draw = ImageDraw.Draw(image)
            side = rng.randint(size // 3, int(size * 0.7))
            x0 = rng.randint(2, size - side - 2)
            y0 = rng.randint(2, size - side - 2)
            if label == "circle":
                draw.ellipse((x0, y0, x0 + side, y0 + side), fill=colour)
            elif label == "square":
                draw.rectangle((x0, y0, x0 + side, y0 + side), fill=colour)
            else:
                draw.polygon(
                    [(x0 + side / 2, y0), (x0, y0 + side), (x0 + side, y0 + side)], fill=colour
                )
            image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2)))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            uploads.append(Upload(f"{label}/{label}_{i:03d}.png", buffer.getvalue(), label))
    return uploads
