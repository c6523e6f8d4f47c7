"""`phos_dask.render` on dask arrays and xarray DataArrays: lazy, and bit-identical to the NumPy render of the
computed input for any chunking."""

from __future__ import annotations

import cv2
import dask
import dask.array as da
import numpy as np
import pytest
from dask.callbacks import Callback

import phos_dask
from phos_dask import Settings, darray, total_halo
from phos_dask.film.pipeline import grain_constants

H, W = 150, 200
COLOUR = Settings(film="Portra400", seed=7, image_key="notebook/coffee")  # grain on (the default)
BW = Settings(film="TriX400", seed=7, image_key="notebook/coffee", dtype="uint16")

#: Chunkings of the (150, 200) image: one chunk, regular, grids that do not divide it, chunks smaller than the
#: halo (10 px colour, 5 px B&W at this size), irregular ones with 1–3 px chunks, one axis whole.
CHUNKINGS = {
    "one": (H, W),
    "64": (64, 64),
    "37x53": (37, 53),
    "7x9": (7, 9),
    "4x3": (4, 3),
    "irregular": ((3, 40, 2, 60, 45), (100, 1, 99)),
    "rows-whole": (H, 13),
}


@pytest.fixture(scope="module")
def image(small_photo) -> np.ndarray:
    """A real photograph at 200×150 with clipped highlights on an edge and a corner (bloom, halation)."""
    img = cv2.resize(small_photo, (W, H), interpolation=cv2.INTER_AREA)
    img[4:24, 170:] = 255
    img[-6:, :9] = 255
    return img


@pytest.fixture(scope="module")
def reference(image):
    cache: dict = {}

    def ref(img: np.ndarray, settings: Settings) -> np.ndarray:
        key = (img.shape, img.dtype.str, img.tobytes().__hash__(), settings)
        if key not in cache:
            cache[key] = phos_dask.render(img, settings)
        return cache[key]

    return ref


def _chunks(name: str, channels: int | None = 3):
    spatial = CHUNKINGS[name]
    if channels is None:
        return spatial
    return (*spatial, (channels,)) if isinstance(spatial[0], tuple) else (*spatial, channels)


def _boundaries(chunks: tuple[int, ...]) -> set[int]:
    return set(np.cumsum(chunks).tolist())


def test_sizes_put_some_chunkings_below_the_halo():
    assert total_halo(COLOUR, (H, W)) == 10
    assert total_halo(BW, (H, W)) == 5


@pytest.mark.parametrize("name", list(CHUNKINGS))
@pytest.mark.parametrize("settings", [COLOUR, BW], ids=["colour", "bw"])
def test_bit_identical_to_numpy_for_any_chunking(image, reference, settings, name):
    x = da.from_array(image, chunks=_chunks(name))
    y = phos_dask.render(x, settings)
    assert isinstance(y, da.Array)
    ref = reference(image, settings)
    assert y.shape == ref.shape and y.dtype == ref.dtype
    got = y.compute()
    assert got.dtype == ref.dtype
    assert np.array_equal(got, ref), f"{settings.film} chunks {name}: {np.count_nonzero(got != ref)} px differ"
    halo = total_halo(settings, (H, W))
    for axis in (0, 1):
        before, after = x.chunks[axis], y.chunks[axis]
        if min(before) >= halo:
            assert after == before  # output chunks = input chunks
        else:  # merged: at least the halo (or one chunk), and only the input's own boundaries
            assert len(after) == 1 or min(after) >= halo
            assert _boundaries(after) <= _boundaries(before)
    if y.ndim == 3:
        assert y.chunks[2] == (3,)


@pytest.mark.parametrize(
    ("settings", "shape_kind"),
    [(COLOUR.replace(dtype="float32"), "grey"), (BW, "grey"), (COLOUR.replace(dtype="uint16"), "rgba"),
     (BW.replace(dtype="float16"), "rgba")],
)
def test_grey_and_rgba_inputs_other_dtypes_and_split_channels(image, reference, settings, shape_kind):
    if shape_kind == "grey":
        img = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        x = da.from_array(img, chunks=(37, 53))
    else:
        img = np.concatenate([image, np.full((H, W, 1), 128, np.uint8)], axis=2)
        x = da.from_array(img, chunks=(8, 64, 2))  # channels in two chunks: made one
    y = phos_dask.render(x, settings)
    ref = reference(img, settings)
    assert y.dtype == ref.dtype and y.shape == ref.shape
    assert np.array_equal(y.compute(), ref)


def test_render_is_lazy(image, reference):
    calls = []

    def load() -> np.ndarray:
        calls.append(1)
        return image

    x = da.from_delayed(dask.delayed(load)(), shape=image.shape, dtype=image.dtype).rechunk((37, 53, 3))
    ran = []

    class Count(Callback):
        def _pretask(self, key, dsk, state):
            ran.append(key)

    with Count():
        y = phos_dask.render(x, COLOUR)
        z = phos_dask.render(x[:, :, 0], BW)
    assert calls == [] and ran == []  # no compute while the graph is built
    got, got_bw = dask.compute(y, z)
    assert np.array_equal(got, reference(image, COLOUR))
    assert np.array_equal(got_bw, reference(np.ascontiguousarray(image[:, :, 0]), BW))
    assert calls == [1]  # the input was read once, shared by the grain reduction and the render


def test_grain_constants_ahead_then_a_streaming_render(image, reference):
    x = da.from_array(image, chunks=(37, 53, 3))
    k = darray.grain_constants(x, COLOUR).compute()
    assert k == grain_constants(image, COLOUR)
    y = darray.render_dask(x, COLOUR, grain_k=k)
    assert not any(str(key[0] if isinstance(key, tuple) else key).startswith("phos-grain") for key in y.dask)
    assert np.array_equal(y.compute(), reference(image, COLOUR))
    assert darray.grain_constants(x, COLOUR.replace(grain="none")).compute() == ()


def test_distributed_scheduler_with_worker_processes(image, reference):
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        distributed.Client(cluster),
    ):
        x = da.from_array(image, chunks=(37, 53, 3))
        assert np.array_equal(phos_dask.render(x, COLOUR).compute(), reference(image, COLOUR))
        xp = da.from_array(image, chunks=(8, 40, 3)).persist()  # chunks held by the workers, rows < the halo
        assert np.array_equal(phos_dask.render(xp, BW).compute(), reference(image, BW))
        assert np.array_equal(phos_dask.render(xp, COLOUR).compute(), reference(image, COLOUR))


def test_refuses_working_size_and_bad_shapes(image):
    x = da.from_array(image, chunks=(64, 64, 3))
    with pytest.raises(ValueError, match="working_size"):
        phos_dask.render(x, COLOUR.replace(working_size=100))
    with pytest.raises(ValueError, match="expected an image"):
        phos_dask.render(da.zeros((10, 10, 5), chunks=5), COLOUR)


def test_merge_small_chunks():
    merge = darray.merge_small_chunks
    assert merge((64, 64, 22), 10) == (64, 64, 22)
    assert merge((64, 64, 8), 10) == (64, 72)
    assert merge((4, 4, 4, 30, 4), 10) == (12, 34)
    assert merge((3, 3), 10) == (6,)
    assert merge((0, 5, 0, 5), 0) == (5, 5)


# --- xarray ---------------------------------------------------------------------------------------------


def _labelled(xr, data, dims=("y", "x", "band")):
    coords = {"y": np.arange(H) * 0.5, "x": np.arange(W) * 0.25 + 10, "row_label": ("y", [f"r{i}" for i in range(H)]),
              "time": np.datetime64("2026-01-02")}
    if len(dims) == 3:
        coords["band"] = ["R", "G", "B", "A"][: data.shape[2]]
    return xr.DataArray(data, dims=dims, coords=coords, name="scan", attrs={"units": "sRGB"})


def _same_coords(out, arr, dims):
    for name in ("y", "x", "row_label", "time"):
        assert out.coords[name].equals(arr.coords[name])
    assert out.dims == dims


def test_dataarray_keeps_dims_and_coords(image, reference):
    xr = pytest.importorskip("xarray")
    arr = _labelled(xr, da.from_array(image, chunks=(37, 53, 3)))
    out = phos_dask.render(arr, COLOUR)
    assert isinstance(out, xr.DataArray) and isinstance(out.data, da.Array) and out.name == "scan"
    _same_coords(out, arr, ("y", "x", "band"))
    assert list(out.band.values) == ["R", "G", "B"]
    assert np.array_equal(out.values, reference(image, COLOUR))

    bw = phos_dask.render(arr, BW)  # B&W output: no channel dim
    _same_coords(bw, arr, ("y", "x"))
    assert "band" not in bw.coords
    assert np.array_equal(bw.values, reference(image, BW))


def test_dataarray_numpy_backed_rgba_and_grey(image, reference):
    xr = pytest.importorskip("xarray")
    rgba = np.concatenate([image, np.full((H, W, 1), 255, np.uint8)], axis=2)
    out = phos_dask.render(_labelled(xr, rgba), COLOUR)  # NumPy in → NumPy out, computed now
    assert isinstance(out.data, np.ndarray)
    _same_coords(out, _labelled(xr, rgba), ("y", "x", "band"))
    assert list(out.band.values) == ["R", "G", "B"]  # alpha's label dropped with alpha
    assert np.array_equal(out.values, reference(rgba, COLOUR))

    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    arr = _labelled(xr, da.from_array(grey, chunks=(50, 50)), dims=("y", "x"))
    out = phos_dask.render(arr, COLOUR)
    _same_coords(out, arr, ("y", "x", darray.CHANNEL_DIM))
    assert np.array_equal(out.values, reference(grey, COLOUR))
    with pytest.raises(ValueError, match="working_size"):
        phos_dask.render(_labelled(xr, rgba), COLOUR.replace(working_size=100))
