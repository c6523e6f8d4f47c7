"""Bad input: every hostile or awkward file gets one line naming it and its problem, the job exits 1, and
every good file's output is complete and correct."""

from __future__ import annotations

import ctypes
import io
import json
import os
import subprocess
import sys
import tracemalloc

import cv2
import numpy as np
import pytest
import zarr
from bad_inputs import FAILS, RENDERS, animated, huge_header_png, make_corpus
from PIL import Image

from phos_dask.imageio import ImageReadError, decode_image, decode_image_info
from phos_dask.render import render
from phos_dask.settings import Settings
from phos_dask.store import safe_key, unique_keys

ENV = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
EXPECTED_STDERR = ("dashboard: ", "job page: ", "kernels: ", "device: ", "contact sheet: ")


def run_cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "phos_dask", "run", *args], capture_output=True, text=True,
                          env=env or ENV, timeout=300, **kw)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, small_photo):
    root = tmp_path_factory.mktemp("bad") / "source tree"
    return root, make_corpus(root, small_photo)


@pytest.fixture(scope="module")
def corpus_run(corpus, tmp_path_factory):
    root, _ = corpus
    out = tmp_path_factory.mktemp("bad-out") / "out.zarr"
    proc = run_cli(str(root), "--out", str(out), "--film", "Portra400", "--workers", "2",
                   "--dashboard-address", "127.0.0.1:0")
    return proc, out, json.loads((out / "_phos" / "report.json").read_text())


def test_each_bad_file_is_one_line_naming_it_and_the_job_exits_1(corpus, corpus_run):
    _, expect = corpus
    proc, _, _ = corpus_run
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    failed = [line for line in proc.stderr.splitlines() if line.startswith("phos_dask: failed: ")]
    bad = sorted(rel for rel, want in expect.items() if want == FAILS)
    assert len(failed) == len(bad), proc.stderr
    for rel in bad:
        assert sum(1 for line in failed if rel in line) == 1, (rel, failed)
    summary = [line for line in proc.stderr.splitlines() if " done, " in line]
    assert len(summary) == 1 and f"{len(bad)} failed" in summary[0]
    others = [line for line in proc.stderr.splitlines()
              if line not in failed and line not in summary and not line.startswith(EXPECTED_STDERR)]
    assert others == [], others


def test_the_report_names_each_bad_file_and_its_problem(corpus, corpus_run):
    _, expect = corpus
    _, _, report = corpus_run
    rows = {r["source"]: r for r in report["images"]}
    assert set(rows) == set(expect)
    for rel, want in expect.items():
        assert rows[rel]["status"] == ("failed" if want == FAILS else "done"), rows[rel]
        if want == FAILS:
            assert rows[rel]["error"] and "\n" not in rows[rel]["error"]
    problems = {rel: rows[rel]["error"] for rel in expect if expect[rel] == FAILS}
    assert "empty" in problems["empty.jpg"]
    assert "truncated JPEG" in problems["truncated.jpg"]
    assert "truncated PNG" in problems["truncated.png"]
    assert "CRC" in problems["bad-crc.png"]
    assert "not a recognised image format" in problems["page.jpg"]
    assert "--max-pixels" in problems["huge-header.png"] and "100000x100000" in problems["huge-header.png"]
    assert "unsupported TIFF compression 60000" in problems["odd-compression.tif"]
    assert "symbolic link loop" in problems["deep/loop"] and "symbolic link loop" in problems["self.jpg"]
    assert report["counts"] == {"done": sum(w == RENDERS for w in expect.values()), "skipped": 0,
                                "failed": sum(w == FAILS for w in expect.values())}


def test_every_good_file_is_complete_and_equals_the_model_run_on_it_directly(corpus, corpus_run):
    root, expect = corpus
    _, out, report = corpus_run
    store = zarr.open_group(str(out), mode="r")
    keys = {r["source"]: r["key"] for r in report["images"] if r["key"]}
    for rel, want in expect.items():
        if want != RENDERS:
            continue
        group = store[keys[rel]]
        assert group.attrs["phos"]["status"] == "complete", rel
        image = decode_image((root / rel).read_bytes(), rel)
        expected = render(image, Settings(film="Portra400", image_key=rel, dtype="uint16"))
        got = np.moveaxis(group["0"][...], 0, -1)
        np.testing.assert_array_equal(got, expected, err_msg=rel)


def test_output_keys_are_single_distinct_names_inside_the_store(corpus_run):
    _, out, report = corpus_run
    keys = [r["key"] for r in report["images"] if r["key"]]
    assert len(set(keys)) == len(keys)
    store = zarr.open_group(str(out), mode="r")
    assert sorted(k for k in store.group_keys() if k[0] != "_") == sorted(
        r["key"] for r in report["images"] if r["status"] == "done")
    for path in out.rglob("*"):
        assert path.resolve().is_relative_to(out.resolve())
        assert not path.is_symlink()


def test_keys_never_form_a_path_and_never_collide():
    hostile = ["../../etc/passwd.jpg", "a/../../b.jpg", "..", ".", "/abs/x.jpg", "C:\\win\\x.jpg", "-rf.jpg",
               "__init__.jpg", "_report.json.jpg", "a b.jpg", "a_b.jpg", "A_B.jpg", "é.jpg", "e\u0301.jpg", "x" * 400]
    keys = unique_keys(hostile)
    for p, k in keys.items():
        assert "/" not in k and "\\" not in k and k not in (".", "..") and not k.startswith((".", "_")), (p, k)
        assert 0 < len(k.encode()) <= 160 and k.isascii()
    assert len({k.lower() for k in keys.values()}) == len(hostile)
    assert safe_key("holiday/été 2019/IMG 1.jpg") == "holiday__ete_2019__IMG_1.jpg"


def test_animations_give_their_first_frame(small_photo):
    for fmt in ("GIF", "PNG"):
        data = animated(small_photo, fmt)
        with Image.open(io.BytesIO(data)) as im:
            assert getattr(im, "n_frames", 1) == 3
            first = np.array(im.convert("RGB"))
        np.testing.assert_array_equal(decode_image(data, f"a.{fmt.lower()}"), first)


def test_a_cmyk_jpeg_is_converted_to_rgb(corpus, small_photo):
    root, _ = corpus
    image = decode_image((root / "cmyk.jpg").read_bytes(), "cmyk.jpg")
    rgb = cv2.resize(small_photo, (360, 240), interpolation=cv2.INTER_AREA)
    assert image.shape == rgb.shape and image.dtype == np.uint8
    assert np.abs(image.astype(int) - rgb).mean() < 3


def test_a_huge_header_is_refused_before_any_pixel_is_allocated():
    data = huge_header_png()
    tracemalloc.start()
    with pytest.raises(ImageReadError, match="over the limit of 1000000000 px"):
        decode_image_info(data, "huge.png")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5_000_000
    with pytest.raises(ImageReadError, match="20x10 px"):
        decode_image_info(huge_header_png(20, 10), "small.png", max_pixels=100)


def test_max_pixels_is_a_run_flag(tmp_path, small_photo):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(small_photo).save(src / "a.png")
    proc = run_cli(str(src), "--out", str(tmp_path / "o.zarr"), "--film", "Portra400", "--workers", "1",
                   "--dashboard-address", "127.0.0.1:0", "--max-pixels", "1e4")
    assert proc.returncode == 1
    assert [line for line in proc.stderr.splitlines() if line.startswith("phos_dask: failed:")] == [
        f"phos_dask: failed: image {str(src / 'a.png')!r} is 450x300 px (0.00 gigapixels), over the limit of "
        "10000 px (--max-pixels); not decoded"]


def test_a_file_deleted_after_discovery_fails_alone(tmp_path, small_photo):
    from phos_dask.cluster import connect
    from phos_dask.job import JobSpec, plan_job, run_job

    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(small_photo).save(src / name)
    spec = JobSpec(str(src), str(tmp_path / "o.zarr"), Settings(film="Portra400"))
    plan = plan_job(spec)
    (src / "b.png").unlink()
    with connect(workers=1, dashboard_address="127.0.0.1:0") as client:
        report = run_job(spec, client, plan=plan)
    rows = {r["source"]: r for r in report["images"]}
    assert rows["b.png"]["status"] == "failed" and "No such file" in rows["b.png"]["error"]
    assert rows["a.png"]["status"] == rows["c.png"]["status"] == "done"


def _without_root_file_access() -> None:
    """Drop the capabilities that let root read any file (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) from the
    bounding set, so the program about to be executed gets ordinary permission checks."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP


def test_a_file_without_read_permission_fails_alone(tmp_path, small_photo):
    """Root reads any file, so as root the job runs without the capabilities that allow that."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("open.png", "locked.png"):
        Image.fromarray(small_photo).save(src / name)
    (src / "locked.png").chmod(0o000)
    drop = _without_root_file_access if os.geteuid() == 0 else None
    probe = subprocess.run([sys.executable, "-c", f"open({str(src / 'locked.png')!r}, 'rb')"], capture_output=True,
                           preexec_fn=drop)
    if probe.returncode == 0:
        pytest.skip("this process may read any file and cannot give that up (no CAP_SETPCAP)")
    proc = run_cli(str(src), "--out", str(tmp_path / "o.zarr"), "--film", "Portra400", "--workers", "1",
                   "--dashboard-address", "127.0.0.1:0", preexec_fn=drop)
    assert proc.returncode == 1, proc.stderr
    failed = [line for line in proc.stderr.splitlines() if line.startswith("phos_dask: failed:")]
    assert len(failed) == 1 and "locked.png" in failed[0] and "Permission denied" in failed[0], proc.stderr
    store = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")
    assert store["open.png"].attrs["phos"]["status"] == "complete"
