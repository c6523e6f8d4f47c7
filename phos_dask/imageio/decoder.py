"""The decoder protocol: what every decoder family (`jpeg`, `tiff`, `raw`, `opencv`) implements and returns.

A `Decoder` is asked twice: `info` reads the header (and refuses, with ImageReadError, a file that must not
be decoded: over the pixel limit, structurally broken), then `decode` makes the pixels as stored, a
`Decoded`. Colour management (`colour`) and orientation (`ORIENT`) are applied after, the same for all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class Header:
    """What a decoder learned from a file's header without decoding the pixels."""

    format: str | None
    mode: str  # Pillow's mode ("RGB", "L", "LA", "CMYK", …), or "" when not known
    size: tuple[int, int]  # (width, height)
    orientation: int  # EXIF orientation still to apply (1: none, or the decoder applies it)
    icc: bytes | None


@dataclass
class Decoded:
    """A decoder's result before colour management and orientation."""

    pixels: np.ndarray  # (h, w) grey, (h, w, 3) RGB, or (h, w, 4) CMYK ink amounts; as stored
    fmt: str
    icc: bytes | None = None
    orientation: int = 1  # EXIF/TIFF orientation still to apply (1: none, or the decoder applied it)
    cmyk: bool = False


class Decoder(Protocol):
    """One decoder family. `kind` is the sniffed format name (`formats.sniff`; None when unknown), `name`
    only for messages. Both raise ImageReadError (one line) for a file that cannot be decoded."""

    def info(self, data: bytes, name: str, kind: str | None, max_pixels: int | None) -> Header | None:
        """The header's content (None when this decoder reads nothing before decoding), after the checks
        that refuse the file before any pixel is allocated."""
        ...

    def decode(self, data: bytes, name: str, kind: str | None, header: Header | None,
               max_pixels: int | None) -> Decoded:
        """The pixels as stored, with what colour management and orientation need."""
        ...


#: EXIF orientation → the view of the stored pixels that shows the picture upright.
ORIENT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: a[::-1].swapaxes(0, 1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: a[:, ::-1].swapaxes(0, 1),
}
