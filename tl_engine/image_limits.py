"""How much an image may be: the limits every decode checks, read from the environment
at each call, and the memory budget decodes share. No image library here: the commands
that only check limits (a folder ingested again, unchanged) start without one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import DatasetError, SpecError

# The default; $TL_MAX_IMAGE_PIXELS overrides it. The environment is read at each call
# (see `max_image_pixels`), so a server's setting applies without a reload and a typo
# in it is reported where it matters instead of breaking every import.
MAX_IMAGE_PIXELS = 50_000_000
# Decoded pixels held at once by every decode in the process together (ingest threads,
# predictions, thumbnails); $TL_DECODE_BUDGET_BYTES overrides it. An image's share is its
# decoded size times the working copies below, so large images decode one at a time and
# an upload's memory stays bounded whatever it holds. One image larger than the whole
# budget still decodes, alone.
DECODE_BUDGET_BYTES = 512 * 1024**2

class ImageRejected(DatasetError):
    """One file cannot be used as an image; `reason` says why in plain words."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason

    def __reduce__(self):  # keeps the two fields when sent to or from a worker process
        return (type(self), (self.name, self.reason))


def max_image_pixels() -> int:
    """The pixel limit in force: $TL_MAX_IMAGE_PIXELS, else MAX_IMAGE_PIXELS."""
    return env_int("TL_MAX_IMAGE_PIXELS", MAX_IMAGE_PIXELS)


def decode_budget_bytes() -> int:
    """The decode memory budget in force: $TL_DECODE_BUDGET_BYTES, else DECODE_BUDGET_BYTES."""
    return env_int("TL_DECODE_BUDGET_BYTES", DECODE_BUDGET_BYTES)


class MemoryBudget:
    """A semaphore counted in bytes: `hold(n)` waits until n bytes fit under the capacity.

    A request larger than the capacity is granted when nothing else is held, so one huge
    item still goes through, alone, instead of waiting forever.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._held = 0

    @property
    def held(self) -> int:
        return self._held

    @contextmanager
    def hold(self, amount: int, capacity: int) -> Iterator[None]:
        amount = max(0, min(int(amount), int(capacity)))
        with self._changed:
            while self._held and self._held + amount > capacity:
                self._changed.wait()
            self._held += amount
        try:
            yield
        finally:
            with self._changed:
                self._held -= amount
                self._changed.notify_all()


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
