"""Camera RAW files are developed by LibRaw (the `raw` extra) to 16-bit sRGB before the model."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from phos_dask.imageio import ImageReadError, decode_image_info

rawpy = pytest.importorskip("rawpy")

H, W = 256, 384


def _dng(path, scene: np.ndarray) -> None:
    """A minimal DNG: an RGGB Bayer mosaic of `scene` (H, W, 3 uint16, 12-bit) with the tags LibRaw needs."""
    cfa = np.empty((H, W), np.uint16)
    cfa[0::2, 0::2] = scene[0::2, 0::2, 0]
    cfa[0::2, 1::2] = scene[0::2, 1::2, 1]
    cfa[1::2, 0::2] = scene[1::2, 0::2, 1]
    cfa[1::2, 1::2] = scene[1::2, 1::2, 2]
    identity = (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1)
    tags = [
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50708, "s", 0, "phos_dask test camera", True),  # UniqueCameraModel
        (33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
        (33422, "B", 4, (0, 1, 1, 2), True),  # CFAPattern: RGGB
        (50710, "B", 3, (0, 1, 2), True),  # CFAPlaneColor
        (50714, "H", 1, 0, True),  # BlackLevel
        (50717, "H", 1, 4095, True),  # WhiteLevel
        (50721, "2i", 9, identity, True),  # ColorMatrix1
        (50778, "H", 1, 21, True),  # CalibrationIlluminant1: D65
        (50728, "2I", 3, (1, 1, 1, 1, 1, 1), True),  # AsShotNeutral
    ]
    tifffile.imwrite(path, cfa, photometric=32803, extratags=tags)


def test_a_dng_is_developed_to_16_bit_rgb(tmp_path):
    yy, xx = np.mgrid[0:H, 0:W]
    scene = np.stack([200 + xx * 3800 // W, 200 + yy * 3800 // H, np.full((H, W), 1500)], axis=-1).astype(np.uint16)
    _dng(tmp_path / "frame.dng", scene)
    image, info = decode_image_info((tmp_path / "frame.dng").read_bytes(), "frame.dng")
    assert image.shape == (H, W, 3) and image.dtype == np.uint16
    assert info["format"] == "RAW" and info["bits"] == 16
    red_by_column = image[:, :, 0].astype(float).mean(axis=0)
    green_by_row = image[:, :, 1].astype(float).mean(axis=1)
    assert red_by_column[-20:].mean() > red_by_column[:20].mean() + 5000  # the scene's red ramp, left → right
    assert green_by_row[-20:].mean() > green_by_row[:20].mean() + 5000  # green ramp, top → bottom
    assert len(np.unique(image[:, :, 0])) > 1000  # 16-bit development, not 8-bit steps


def test_a_broken_raw_file_is_one_clear_error(tmp_path):
    with pytest.raises(ImageReadError, match=r"cannot decode RAW file 'bad\.nef'"):
        decode_image_info(b"definitely not a raw file" * 10, "bad.nef")


def test_a_raw_file_runs_through_a_job(tmp_path):
    import zarr

    from phos_dask import Settings
    from phos_dask.cluster import connect
    from phos_dask.job import JobSpec, run_job

    src = tmp_path / "card"
    src.mkdir()
    yy, xx = np.mgrid[0:H, 0:W]
    _dng(src / "IMG_0001.dng", np.stack([200 + xx * 10, 200 + yy * 10, 900 + 0 * xx], -1).astype(np.uint16))
    with connect(workers=1, dashboard_address="127.0.0.1:0") as client:
        report = run_job(JobSpec(str(src), str(tmp_path / "out.zarr"), Settings(dtype="uint16")), client)
    assert report["counts"]["done"] == 1
    assert zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["IMG_0001.dng"]["0"].shape == (3, H, W)
