"""Contact-sheet thumbnails: an input and its rendered result, each fitted into a square of THUMB px,
kept together as one small JPEG (input left, result right, same size). Made by the task that holds both
images, so the client never decodes an input to show it; returned with the task's result, and stored by
the job's client in packs: OUT/_phos/thumbs/<time ns>-<run token>-<n>.zip, uncompressed ZIP archives of
`<key>.jpg` members (any unzip tool lists them) plus, in a pack written before images are replaced, a
`removed.json` member listing their keys. Packs are read in name order and later ones win, as the index's
parts are (phos_dask.index); a job writes a pack with each index part and compacts them into one at its
end, so the thumbnails cost no request of their own per image."""

from __future__ import annotations

import io
import json
import secrets
import time
import zipfile
from collections.abc import Iterable

import cv2
import numpy as np

from phos_dask.samples import to_codes
from phos_dask.storage import Location
from phos_dask.store import THUMBS

REMOVED = "removed.json"

#: Side of a thumbnail's square, px.
THUMB = 256
QUALITY = 88


def fitted_size(h: int, w: int, thumb: int = THUMB) -> tuple[int, int]:
    """(width, height) of an h×w image fitted into thumb×thumb, keeping its aspect ratio."""
    s = min(thumb / h, thumb / w)
    return max(1, round(w * s)), max(1, round(h * s))


def fit(image: np.ndarray, thumb: int = THUMB) -> np.ndarray:
    """(h, w[, c]) → fitted into thumb×thumb keeping the aspect ratio (area averaging when shrinking), by
    OpenCV: for the small images a job's client fits (stored thumbnails, a small pyramid level)."""
    size = fitted_size(*image.shape[:2], thumb)
    interpolation = cv2.INTER_LINEAR if size[0] >= image.shape[1] else cv2.INTER_AREA
    return cv2.resize(np.ascontiguousarray(image), size, interpolation=interpolation)


#: Inputs and levels of at least this many px are shrunk by the numba kernel, smaller ones by OpenCV (≤ 2 ms
#: each): a first run on small photos then does not compile it.
KERNEL_MIN_PX = 500_000


def shrink(image: np.ndarray, thumb: int = THUMB) -> np.ndarray:
    """`fit` for a worker's inputs and levels: 8- and 16-bit codes of KERNEL_MIN_PX or more are area-averaged in one
    pass by `pyramid.area_shrink` (OpenCV's INTER_AREA within a code; for a 1224×816 RGB photo 1.1 ms
    instead of 3.9, for 24 MP 9.5 ms instead of 83, one core), anything else as `fit` does."""
    size = fitted_size(*image.shape[:2], thumb)
    if (image.dtype not in (np.uint8, np.uint16) or image.ndim not in (2, 3) or size[0] >= image.shape[1]
            or image.shape[0] * image.shape[1] < KERNEL_MIN_PX):
        return fit(image, thumb)
    from phos_dask.pyramid import area_shrink  # numba: a worker's, not the job client's

    return area_shrink(image, size)


def rgb8(image: np.ndarray) -> np.ndarray:
    """Decoded input samples (uint8/uint16 codes, float sRGB in [0, 1]; grey, RGB or RGBA) → (h, w, 3)
    uint8."""
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif image.dtype.kind == "f":
        image = np.floor(np.clip(np.nan_to_num(image), 0, 1) * 255 + 0.5).astype(np.uint8)
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image


def source_thumb(image: np.ndarray, thumb: int = THUMB) -> np.ndarray:
    """A decoded input (h, w[, c]) → its (h', w', 3) uint8 thumbnail (shrunk first, then made 8-bit RGB)."""
    return rgb8(shrink(image, thumb))


def result_thumb(level_chw: np.ndarray, thumb: int = THUMB) -> np.ndarray:
    """A stored pyramid level (C, h, w) in the store's dtype → its (h', w', 3) uint8 thumbnail.

    Integer codes are fitted plane by plane and the thumbnail's few pixels then made 8-bit, within a code of
    converting the level first: 0.95 ms instead of 3.1 for the 612×408 uint16 level of a 1 MP image (one
    core). Float16 levels (linear light, which OpenCV cannot resize) are converted first."""
    level = np.asarray(level_chw)
    if level.dtype not in (np.uint8, np.uint16):
        level = to_codes(level, 8)
    planes = [shrink(plane, thumb) for plane in level]
    small = planes[0] if len(planes) == 1 else np.stack(planes, axis=-1)
    return rgb8(to_codes(small, 8))


def encode_pair(source: np.ndarray | None, result: np.ndarray) -> bytes:
    """One JPEG of [source | result] (a source that is missing is stored as a grey square)."""
    if source is None or source.shape != result.shape:
        source = np.full_like(result, 96) if source is None else cv2.resize(source, result.shape[1::-1])
    pair = np.concatenate([source, result], axis=1)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(pair, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
    assert ok
    return data.tobytes()


def decode_pair(data: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """(source, result) RGB uint8 thumbnails from `encode_pair`'s bytes, or None when they are unreadable."""
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if pixels is None or pixels.shape[1] % 2:
        return None
    pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    half = pixels.shape[1] // 2
    return pixels[:, :half], pixels[:, half:]


def pack(pairs: dict[str, bytes], removed: Iterable[str] = ()) -> bytes:
    """{key: pair JPEG} (and keys whose earlier thumbnails are stale) → one uncompressed ZIP archive."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as z:
        removed = sorted(set(removed))
        if removed:
            z.writestr(REMOVED, json.dumps(removed))
        for key, data in pairs.items():
            z.writestr(f"{key}.jpg", data)
    return buffer.getvalue()


def unpack(data: bytes) -> tuple[dict[str, bytes], list[str]]:
    """pack()'s bytes → ({key: pair JPEG}, removed keys); a damaged pack reads as empty."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            pairs = {n[:-4]: z.read(n) for n in z.namelist() if n.endswith(".jpg")}
            removed = json.loads(z.read(REMOVED)) if REMOVED in z.namelist() else []
    except (zipfile.BadZipFile, ValueError, KeyError, OSError):
        return {}, []
    return pairs, [k for k in removed if isinstance(k, str)]


def read_packs(out: Location) -> tuple[dict[str, bytes], list[str]]:
    """({key: pair JPEG} of every image with stored thumbnails, the names of the packs): one listing and
    one concurrent GET per pack. Thumbnails stored one object per image by earlier versions
    (`<thumbs folder>/<key>.jpg`) are read too; packs win over them."""
    names = out.names(THUMBS)
    packs = sorted(n for n in names if n.endswith(".zip"))
    singles = [n for n in names if n.endswith(".jpg")]
    fetched = out.get_many(f"{THUMBS}/{n}" for n in [*singles, *packs])
    pairs = {n[:-4]: fetched[f"{THUMBS}/{n}"] for n in singles if fetched.get(f"{THUMBS}/{n}")}
    for name in packs:
        found, removed = unpack(fetched.get(f"{THUMBS}/{name}") or b"")
        for key in removed:
            pairs.pop(key, None)
        pairs.update(found)
    return pairs, packs


class PackWriter:
    """The thumbnail packs of one run: `add` a key's pair, `remove` keys about to be replaced, `flush`
    writes what is pending as one pack; `compact` merges every pack into one at the end of the job."""

    def __init__(self, out: Location) -> None:
        self.out = out
        self.token = secrets.token_hex(4)
        self.pending: dict[str, bytes] = {}
        self.removed: set[str] = set()
        self.written: list[str] = []
        self.last = time.monotonic()

    def add(self, key: str, pair: bytes) -> None:
        """Keep a pair; a pack is written once BATCH_SECONDS have passed since the last one."""
        from phos_dask.index import BATCH_SECONDS

        self.pending[key] = pair
        if time.monotonic() - self.last >= BATCH_SECONDS:
            self.flush()

    def remove(self, keys: Iterable[str]) -> None:
        self.removed.update(keys)

    def _name(self, suffix: str) -> str:
        return f"{time.time_ns():020d}-{self.token}-{suffix}.zip"

    def flush(self) -> None:
        self.last = time.monotonic()
        if not self.pending and not self.removed:
            return
        name = self._name(f"{len(self.written):06d}")
        self.out.put(f"{THUMBS}/{name}", pack(self.pending, self.removed))
        self.written.append(name)
        self.pending, self.removed = {}, set()

    def compact(self, earlier_runs: bool) -> None:
        """Replace every pack (earlier runs' and this run's, and single thumbnails of older versions) by one
        holding the latest thumbnail of each key. `earlier_runs`: the output held a finished run's files
        before this one (without them and with one pack of its own, nothing is listed or written)."""
        self.flush()
        if not earlier_runs and len(self.written) < 2:
            return
        names = self.out.names(THUMBS)
        if sum(1 for n in names if n.endswith((".zip", ".jpg"))) < 2:
            return
        pairs, _ = read_packs(self.out)
        name = self._name("all")
        self.out.put(f"{THUMBS}/{name}", pack(pairs))
        self.out.delete_many(f"{THUMBS}/{n}" for n in names if n.endswith((".zip", ".jpg")) and n != name)
