"""Region reads of tiled TIFFs: `open_region_reader` gives a `RegionReader` that decodes only the tiles a
window touches, so a tile task never holds the whole image. Its windows are exactly crops of what
`decode_image` gives for the whole file (the same `tiff.TiffLayout` and `colour.colour_manage`)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import tifffile

from phos_dask.errors import one_line
from phos_dask.imageio.colour import colour_manage
from phos_dask.imageio.formats import ImageReadError
from phos_dask.imageio.tiff import JPEG_COMPRESSIONS, TiffLayout, quiet_tifffile, tiff_icc


class RegionReader:
    """Windows of a tiled TIFF's first page, decoding only the tiles that a window touches.

    Made by `open_region_reader`. ``shape`` is (h, w) of the picture (only files with orientation 1 are
    accepted, so stored and upright agree), ``dtype`` and ``channels`` (1: `read` returns (h, w) grey;
    3: (h, w, 3) RGB) are those of `read`'s result, and ``info`` is the dict `decode_image_info` would give.
    `read` returns exactly the same crop of what `decode_image` returns for the whole file (the same
    photometric handling and colour management). Reads may run from several threads (a lock on the file
    serialises the seeks and reads; decoding runs in parallel). The reader pickles as its URL and storage
    options and reopens the file on its first read (so it can travel to a Dask worker). Close it, or use it
    as a context manager.

    Tiles are read through tifffile's public Zarr interface: the page's `aszarr()` store, opened as a Zarr
    array and sliced. The slicing runs on zarr's asynchronous API in an event loop of the calling thread,
    so each thread reads and decodes its own window's tiles (zarr's synchronous API would run every
    reader's reads and decodes on zarr's one I/O thread); in a thread that already runs an event loop it
    uses the synchronous API.
    """

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        """Open `url` and check its first page; ValueError when it cannot be read by region."""
        self.url = url
        self.storage_options = dict(storage_options or {})
        self._lock = threading.Lock()
        self._handles: tuple[tifffile.TiffFile, Any, Any] | None = None
        tf = self._tiff()
        try:
            page = tf.pages.first
            if not page.is_tiled or page.imagedepth > 1:
                raise ValueError("not a 2-D tiled TIFF page")
            if page.is_subsampled and page.compression not in JPEG_COMPRESSIONS:
                raise ValueError("chroma-subsampled YCbCr")
            if int(page.tags.valueof(274, 1)) != 1:
                raise ValueError("orientation other than 1")
            self._layout = TiffLayout.of(page)
            self._icc = tiff_icc(page)
            self.shape: tuple[int, int] = (int(page.imagelength), int(page.imagewidth))
            self._axes: str = page.axes  # of the page's Zarr array: "YX", "YXS" (contiguous) or "SYX" (planar)
            if set(self._axes) - set("YXS"):
                raise ValueError(f"unexpected axes {self._axes!r}")
        except Exception:
            self.close()
            raise
        cmyk = self._layout.kind == "cmyk"
        self.channels: int = self._layout.channels
        self.dtype: np.dtype = self._layout.out_dtype
        probe = np.zeros((1, 1, 4 if cmyk else 3) if self.channels == 3 else (1, 1), self._layout.out_dtype)
        _, icc = colour_manage(probe, self._icc, cmyk)
        self.info: dict[str, Any] = {
            "format": "TIFF", "bits": self.dtype.itemsize * 8, "linear": self.dtype.kind == "f", "icc": icc,
        }

    def _open(self) -> tuple[tifffile.TiffFile, Any]:
        """The open TiffFile and its first page's Zarr store (opened on first use after unpickling)."""
        with self._lock:
            if self._handles is None:
                import fsspec

                fs, path = fsspec.core.url_to_fs(self.url, **self.storage_options)
                protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
                f = None if "file" in protocols or "local" in protocols else fs.open(path, "rb")
                try:
                    tf = tifffile.TiffFile(path if f is None else f)
                    # the store serialises seeks and reads with the file's lock and sets its decoder up now;
                    # maxworkers=1: tiles are decoded in the reading thread (several readers, several threads)
                    store = tf.pages.first.aszarr(maxworkers=1) if tf.pages.first.is_tiled else None
                except Exception:
                    if f is not None:
                        f.close()
                    raise
                self._handles = (tf, f, store)
            return self._handles[0], self._handles[2]

    def _tiff(self) -> tifffile.TiffFile:
        """The open TiffFile (opened on first use after unpickling)."""
        return self._open()[0]

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Rows y0:y1 and columns x0:x1 of the picture, as `decode_image` would give them."""
        h, w = self.shape
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise ValueError(f"window [{y0}:{y1}, {x0}:{x1}] is not inside the {h}×{w} image {self.url!r}")
        _, store = self._open()
        axes = self._axes
        selection = tuple(slice(y0, y1) if a == "Y" else slice(x0, x1) if a == "X" else slice(None) for a in axes)
        try:
            raw = _read_window(store, selection)
        except Exception as e:
            raise ImageReadError(f"cannot decode image {self.url!r}: damaged TIFF data ({one_line(e, 200)})") from None
        samples = np.moveaxis(raw, (axes.index("Y"), axes.index("X")), (0, 1))  # (h, w[, s])
        if "S" not in axes:
            samples = samples[..., None]
        pixels, cmyk = self._layout.finish(samples)
        del raw, samples
        return colour_manage(pixels, self._icc, cmyk)[0]

    def close(self) -> None:
        """Close the file (a later `read` reopens it)."""
        with self._lock:
            handles, self._handles = self._handles, None
        if handles is not None:
            if handles[2] is not None:
                handles[2].close()
            handles[0].close()
            if handles[1] is not None:
                handles[1].close()

    def __enter__(self) -> RegionReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        h, w = self.shape
        return f"RegionReader({self.url!r}, {h}×{w}×{self.channels} {self.dtype})"


async def _read_async(store: Any, selection: tuple[slice, ...]) -> np.ndarray:
    import zarr.api.asynchronous

    array = await zarr.api.asynchronous.open_array(store=store, mode="r")
    return np.asarray(await array.getitem(selection))


def _read_window(store: Any, selection: tuple[slice, ...]) -> np.ndarray:
    """`selection` of the Zarr array in `store`, read in an event loop of this thread (see RegionReader)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop running here: the usual case
        return asyncio.run(_read_async(store, selection))
    import zarr

    return np.asarray(zarr.open_array(store=store, mode="r")[selection])


def open_region_reader(path_or_url: str, storage_options: dict | None = None) -> RegionReader | None:
    """A `RegionReader` for a TIFF/BigTIFF whose first page is tiled (and upright: orientation 1, in a
    photometric layout this module decodes), else None — also for a file that cannot be opened or parsed,
    so the caller falls back to `decode_image`, which reports the problem. `path_or_url` is a local path or
    an fsspec URL (`storage_options` go to fsspec)."""
    try:
        with quiet_tifffile():
            return RegionReader(str(path_or_url), storage_options)
    except Exception:
        return None
