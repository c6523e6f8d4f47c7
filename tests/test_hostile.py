"""Hostile inputs and hostile surroundings, through the real command line on a real local cluster: every
problem is bounded, never hangs, never serves a stale result, never loses a user's file, and reaches the
terminal as one line."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
FLAGS = ["--film", "Portra400", "--workers", "1", "--dashboard-address", "127.0.0.1:0"]


def phos(*args: str | Path, timeout: float = 180, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "phos_dask", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env or ENV)


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr, proc.stderr
    assert "Compute Failed" not in proc.stderr, proc.stderr


def error_line(proc: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert proc.returncode == code, proc.stderr
    no_traceback(proc)
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith(("film: ", "out: "))]
    assert len(lines) == 1 and lines[0].startswith("phos_dask: error: "), proc.stderr
    return lines[0]


def failed_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    no_traceback(proc)
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("phos_dask: failed: ")]


@pytest.fixture(scope="module")
def pixels(small_photo) -> np.ndarray:
    return cv2.cvtColor(cv2.resize(small_photo, (96, 64), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2BGR)


def _png(pixels: np.ndarray) -> bytes:
    return cv2.imencode(".png", pixels)[1].tobytes()


def _chunk(kind: bytes, body: bytes, crc: int | None = None) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) if crc is None
                                                                    else crc)


# --- 1. --max-pixels holds for every input, and planning never decodes --------------------------------------


def test_a_png_claiming_60000_squared_costs_the_planner_nothing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * (60000 * 3 + 1) * 60, 9)  # a few real rows; the rest missing
    exif = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 0) + b"\0\0\0\0"
    data = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", rows) + _chunk(b"eXIf", exif)
            + _chunk(b"IEND", b""))
    (src / "huge.png").write_bytes(data)
    # the peak of this process's own address space (VmHWM; ru_maxrss would start from pytest's, its parent's)
    code = ("import runpy, sys\n"
            "sys.argv = ['phos_dask', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('phos_dask', run_name='__main__')\n"
            "except SystemExit as e:\n    code = e.code\n"
            "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM:')][0].split()[1]\n"
            "print('PEAK', hwm, file=sys.stderr)\n"
            "sys.exit(code)\n")
    proc = subprocess.run([sys.executable, "-c", code, "run", str(src), "--out", str(tmp_path / "o.zarr"),
                           "--dry-run", "--json", "--max-pixels", "1000", *FLAGS],
                          capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 0, proc.stderr
    peak_kb = int(proc.stderr.split("PEAK ")[-1].split()[0])
    assert peak_kb < 600_000  # the planner never held any of the 10.8 GB image
    plan = json.loads(proc.stdout)
    assert plan["plan"][0]["shape"] == [60000, 60000] and plan["plan"][0]["mode"] == "refused"
    assert "--max-pixels" in plan["plan"][0]["error"]


def test_a_png_that_pillow_refuses_is_still_held_to_max_pixels(tmp_path, pixels):
    src = tmp_path / "src"
    src.mkdir()
    png = _png(pixels)
    (src / "bad-text-crc.png").write_bytes(png[:33] + _chunk(b"tEXt", b"k\x00v", crc=0) + png[33:])
    proc = phos("run", src, "--out", tmp_path / "o.zarr", "--max-pixels", "1000", *FLAGS)
    assert proc.returncode == 1
    (line,) = failed_lines(proc)
    assert "bad-text-crc.png" in line and "96x64 px" in line and "--max-pixels" in line, line


# --- 2. special files: reported, never read ----------------------------------------------------------------


def test_a_fifo_at_discovery_is_one_line_and_the_other_images_finish(tmp_path, pixels):
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.png").write_bytes(_png(pixels))
    os.mkfifo(src / "pipe.jpg")
    proc = phos("run", src, "--out", tmp_path / "o.zarr", *FLAGS, timeout=120)
    assert proc.returncode == 1
    (line,) = failed_lines(proc)
    assert "pipe.jpg" in line and "FIFO" in line
    report = json.loads((tmp_path / "o.zarr" / "_phos" / "report.json").read_text())
    assert report["counts"] == {"done": 1, "skipped": 0, "failed": 1}


def test_a_file_swapped_for_a_fifo_after_discovery_fails_at_once(tmp_path, pixels):
    from phos_dask import Settings
    from phos_dask.sources import discover
    from phos_dask.tasks import JobConfig, process_image

    (tmp_path / "a.png").write_bytes(_png(pixels))
    item = discover(str(tmp_path / "a.png"))[0]
    (tmp_path / "a.png").unlink()
    os.mkfifo(tmp_path / "a.png")
    t0 = time.monotonic()
    result = process_image(JobConfig(str(tmp_path / "o.zarr"), Settings(film="Portra400")), item)
    assert time.monotonic() - t0 < 10
    assert result.status == "failed" and "FIFO" in result.error


@pytest.mark.parametrize("special", ["fifo", "dev-zero"])
def test_preview_of_a_special_file_is_one_line(tmp_path, special):
    path = tmp_path / "x.jpg"
    if special == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    line = error_line(phos("preview", path, "-o", tmp_path / "y.jpg", "--film", "Portra400", timeout=60))
    assert "not a regular file" in line


def test_a_sparse_file_far_larger_than_its_header_says_is_not_read(tmp_path, pixels):
    src = tmp_path / "src"
    src.mkdir()
    jpeg = cv2.imencode(".jpg", pixels)[1].tobytes()
    with open(src / "padded.jpg", "wb") as f:
        f.write(jpeg)
        f.truncate(1 << 30)  # 1 GiB, sparse: costs no disk
    proc = phos("run", src, "--out", tmp_path / "o.zarr", *FLAGS)
    (line,) = failed_lines(proc)
    assert "padded.jpg" in line and "96×64" in line and "not read" in line


# --- 3, 4. where the output may be ----------------------------------------------------------------------


def test_an_output_inside_the_source_is_left_out_of_the_inputs(tmp_path, pixels):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(_png(pixels))
    runs = [phos("run", src, "--out", src / "out.zarr", *FLAGS) for _ in range(3)]
    for proc in runs:
        assert proc.returncode == 0, proc.stderr
        assert "note: the output is inside the source: its files (out.zarr/) are not inputs" in proc.stderr
    report = json.loads((src / "out.zarr" / "_phos" / "report.json").read_text())
    assert [(r["source"], r["status"]) for r in report["images"]] == [("a.png", "skipped")]


@pytest.mark.parametrize("where", ["same", "above"])
def test_an_output_that_is_or_holds_the_source_is_refused(tmp_path, pixels, where):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(_png(pixels))
    out = src if where == "same" else tmp_path
    assert "is the source or contains it" in error_line(phos("run", src, "--out", out, *FLAGS))
    assert sorted(p.name for p in src.iterdir()) == ["a.png"]


def test_an_ordinary_folder_is_never_written_into(tmp_path, pixels):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(_png(pixels))
    folder = tmp_path / "my documents"
    (folder / "a.png").mkdir(parents=True)  # a sub-folder named like the image's key
    (folder / "a.png" / "thesis.txt").write_text("precious")
    line = error_line(phos("run", src, "--out", folder, *FLAGS))
    assert "not empty and is not a phos_dask store" in line
    assert (folder / "a.png" / "thesis.txt").read_text() == "precious"
    assert sorted(p.name for p in folder.iterdir()) == ["a.png"]


@pytest.mark.parametrize("kind", ["zarr array", "corrupt zarr.json", "zarr v2 group", "a file"])
def test_outputs_that_are_not_phos_stores_are_one_line(tmp_path, pixels, kind):
    import zarr

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(_png(pixels))
    out = tmp_path / "o.zarr"
    if kind == "zarr array":
        zarr.create_array(str(out), shape=(4,), dtype="uint8")
    elif kind == "corrupt zarr.json":
        out.mkdir()
        (out / "zarr.json").write_text('{"zarr_format": 3, "node_')
    elif kind == "zarr v2 group":
        zarr.open_group(str(out), mode="w", zarr_format=2)
    else:
        out.write_text("not a folder")
    before = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
    error_line(phos("run", src, "--out", out, *FLAGS))
    assert (sorted(p.name for p in out.iterdir()) if out.is_dir() else None) == before


def test_a_job_that_cannot_start_leaves_no_output_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no images found" in error_line(phos("run", tmp_path / "empty", "--out", tmp_path / "o.zarr", *FLAGS))
    assert not (tmp_path / "o.zarr").exists()


# --- 5. one verdict for damaged data -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["whole", "tiled by region"])
def test_a_tiff_with_a_damaged_tile_is_refused_in_every_mode(tmp_path, small_photo, mode):
    src = tmp_path / "src"
    src.mkdir()
    image = cv2.resize(small_photo, (512, 384), interpolation=cv2.INTER_AREA)
    path = src / "scan.tif"
    tifffile.imwrite(path, image, tile=(128, 128), compression="zlib", photometric="rgb")
    with tifffile.TiffFile(path) as tf:
        page = tf.pages.first
        offset, count = page.dataoffsets[5], page.databytecounts[5]
    data = bytearray(path.read_bytes())
    data[offset + 10:offset + count - 10] = bytes(count - 20)  # the sixth tile's deflate stream zeroed
    path.write_bytes(bytes(data))
    env = {**ENV, "PHOS_DASK_FETCH_WHOLE_BYTES": "0"} if mode != "whole" else ENV
    extra = ["--whole-limit", "0", "--tile", "256"] if mode != "whole" else []
    proc = phos("run", src, "--out", tmp_path / "o.zarr", *FLAGS, *extra, env=env)
    assert proc.returncode == 1, proc.stderr
    (line,) = failed_lines(proc)
    assert "scan.tif" in line and "damaged TIFF data" in line
    assert "scan.tif" not in {k for k in _complete(tmp_path / "o.zarr")}


def _complete(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if (p / "zarr.json").exists()
            and json.loads((p / "zarr.json").read_text())["attributes"]["phos"].get("status") == "complete"}


# --- 6. freshness -----------------------------------------------------------------------------------------


def test_a_source_rewritten_with_the_same_size_is_rendered_again(tmp_path, pixels):
    src = tmp_path / "src"
    src.mkdir()
    cv2.imwrite(str(src / "a.bmp"), pixels)
    out = tmp_path / "o.zarr"
    assert phos("run", src, "--out", out, *FLAGS).returncode == 0
    size = (src / "a.bmp").stat().st_size
    cv2.imwrite(str(src / "a.bmp"), pixels[::-1].copy())  # other pixels, same byte size
    assert (src / "a.bmp").stat().st_size == size
    os.utime(src / "a.bmp", ns=(time.time_ns(), time.time_ns() + 10**9))
    proc = phos("run", src, "--out", out, *FLAGS)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "_phos" / "report.json").read_text())
    assert [r["status"] for r in report["images"]] == ["done"]


# --- 7. no tracebacks: a full disk, Ctrl-C ----------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs mounted for the test (root only; skipped where it cannot be made)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_is_one_line_per_image_and_exit_1(tmp_path, small_photo, small_disk):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        big = cv2.resize(small_photo[i:, i:], (1200, 800), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(src / f"p{i}.png"), cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    proc = phos("run", src, "--out", small_disk / "o.zarr", *FLAGS)
    assert proc.returncode == 1, proc.stderr
    no_traceback(proc)
    # one line per image that could not be written, or one for the job when its own files cannot be
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(("phos_dask: failed: ", "phos_dask: error: "))]
    assert lines and all("No space left on device" in ln for ln in lines), proc.stderr


def test_ctrl_c_is_one_line_and_exit_130_without_waiting_out_the_lease(tmp_path, small_photo):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        big = cv2.resize(small_photo[i:, i:], (2400, 1600), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(src / f"p{i:02d}.jpg"), cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    # a run interrupted while tasks of an external cluster may still run waits this long before it lets
    # the lease go (phos_dask.lease.CHECK_CACHE); a local cluster's workers are gone once it has closed
    settle = 120
    proc = subprocess.Popen([sys.executable, "-m", "phos_dask", "run", src, "--out", tmp_path / "o.zarr",
                             "--film", "Portra400", "--workers", "2", "--dashboard-address", "127.0.0.1:0", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**ENV, "PHOS_DASK_LEASE_CACHE": str(settle)}, start_new_session=True)
    assert proc.stdout is not None
    proc.stdout.readline()  # the first image finished: the cluster is busy
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    _, err = proc.communicate(timeout=settle - 30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1] == "phos_dask: error: interrupted"
    assert not (tmp_path / "o.zarr" / "_lease.json").exists()


def test_the_worker_preload_imported_elsewhere_leaves_ctrl_c_alone():
    """Only a local worker's own process ignores SIGINT (phos_dask.worker_setup): a test or a program that
    imports the module keeps its Ctrl-C, and so do the programs it starts (an ignored signal is inherited)."""
    script = ("import signal, subprocess, sys\n"
              "import phos_dask.worker_setup\n"
              "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n"
              "child = 'import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)'\n"
              "print(subprocess.run([sys.executable, '-c', child], capture_output=True, text=True).stdout.strip())\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True"]


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def _heartbeat_cut_off_by_close(set_up_as_phos_dask_does: bool) -> list[str]:
    """A real scheduler and worker in this process; the scheduler answers heartbeats slowly, so one is in
    flight when the worker closes. The errors the worker logged."""
    from distributed import Scheduler, Worker

    from phos_dask import worker_setup

    logger = logging.getLogger("distributed.worker")
    kept, filters = _Kept(), list(logger.filters)
    logger.addHandler(kept)
    try:
        async with Scheduler(host="127.0.0.1", dashboard_address=":0") as scheduler:
            answer = scheduler.handlers["heartbeat_worker"]

            async def slow_answer(*args, **kwargs):
                await asyncio.sleep(0.5)
                return answer(*args, **kwargs)

            scheduler.handlers["heartbeat_worker"] = slow_answer
            async with Worker(scheduler.address, host="127.0.0.1", nthreads=1) as worker:
                if set_up_as_phos_dask_does:
                    worker_setup.dask_setup(worker)
                beat = asyncio.create_task(worker.heartbeat())
                await asyncio.sleep(0.1)
                await worker.close()
                await beat
    finally:
        logger.removeHandler(kept)
        for added in [f for f in logger.filters if f not in filters]:
            logger.removeFilter(added)
    return [r.getMessage() for r in kept.records if r.levelno >= logging.ERROR]


def test_a_heartbeat_cut_off_by_the_workers_own_close_reaches_no_terminal():
    # the race a Ctrl-C'd run can hit: Dask logs it as an error, with a traceback
    assert asyncio.run(_heartbeat_cut_off_by_close(False)) == [
        "Failed to communicate with scheduler during heartbeat."]
    assert asyncio.run(_heartbeat_cut_off_by_close(True)) == []


# --- 8. names that are not one line -----------------------------------------------------------------------


def test_a_name_with_a_newline_stays_on_one_line(tmp_path, pixels):
    src = tmp_path / "src"
    src.mkdir()
    (src / "fine\nname.png").write_bytes(_png(pixels))
    (src / "broken\nname.png").write_bytes(_png(pixels)[:60])
    proc = phos("run", src, "--out", tmp_path / "o.zarr", *FLAGS)
    assert proc.returncode == 1
    (line,) = failed_lines(proc)
    assert "broken\\nname.png" in line
    assert (tmp_path / "o.zarr" / "_phos" / "contact.jpg").exists()


def test_export_of_an_image_whose_source_became_a_fifo_does_not_hang(tmp_path, pixels):
    src = tmp_path / "src"
    src.mkdir()
    cv2.imwrite(str(src / "a.jpg"), pixels)
    out = tmp_path / "o.zarr"
    assert phos("run", src, "--out", out, *FLAGS).returncode == 0
    (src / "a.jpg").unlink()
    os.mkfifo(src / "a.jpg")
    proc = phos("export", out, "--to", tmp_path / "files", "--format", "jpeg", timeout=60)
    assert proc.returncode == 0, proc.stderr
    no_traceback(proc)
    assert (tmp_path / "files" / "a.jpg").exists()


def test_a_png_with_damaged_text_chunks_renders_without_libpng_warnings(tmp_path, pixels):
    src = tmp_path / "src"
    src.mkdir()
    png = _png(pixels)
    damaged = png[:33] + _chunk(b"tEXt", b"k\x00v", crc=0) + _chunk(b"zTXt", b"k\x00\x00garbage") + png[33:]
    (src / "a.png").write_bytes(damaged)
    proc = phos("run", src, "--out", tmp_path / "o.zarr", *FLAGS)
    assert proc.returncode == 0, proc.stderr
    assert "libpng" not in proc.stderr, proc.stderr
    from phos_dask.imageio import decode_image

    np.testing.assert_array_equal(decode_image(damaged, "a.png"), decode_image(png, "a.png"))


# --- found in review -----------------------------------------------------------------------------------


def test_an_image_deleted_by_hand_and_interrupted_while_redone_is_not_taken_for_finished(tmp_path, pixels):
    """The index named it finished; once its objects are gone the index must stop saying so before any task
    writes again, or a redo killed before its marker would be 'skipped' on the next run."""
    from phos_dask import Settings, index
    from phos_dask.job import JobSpec, plan_job
    from phos_dask.storage import Location

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(_png(pixels))
    out = tmp_path / "o.zarr"
    assert phos("run", src, "--out", out, *FLAGS).returncode == 0
    spec = JobSpec(str(src), str(out), Settings(film="Portra400", dtype="uint16"))  # as `run` makes them
    assert [it.key for it in plan_job(spec).skipped] == ["a.png"]
    shutil.rmtree(out / "a.png")
    plan = plan_job(spec)
    assert [it.key for it in plan.todo] == ["a.png"] and plan.replaced == ("a.png",)
    # the run that redoes it writes the tombstone first, then is "killed" before its task runs
    writer = index.Writer(Location.of(str(out)))
    writer.remove(plan.replaced)
    writer.flush()
    (out / "a.png" / "0").mkdir(parents=True)  # some chunks of the interrupted redo, no marker
    again = plan_job(spec)
    assert [it.key for it in again.todo] == ["a.png"] and not again.skipped


@pytest.mark.parametrize(("source", "out"), [
    ("s3://b/shoot.day1/", "s3://b/shoot.day1.zarr"),
    ("s3://b/2024.06.01", "s3://b/2024.06.01.zarr"),
    ("s3://b/scans/a.tif", "s3://b/scans/a.zarr"),
])
def test_default_outputs_keep_dotted_folder_names(source, out):
    from phos_dask.runner import default_out

    assert default_out(source) == out


def test_a_store_of_another_source_is_refused_unless_overwrite(tmp_path, pixels):
    for name in ("day1", "day2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "IMG_0001.png").write_bytes(_png(pixels if name == "day1" else pixels[::-1].copy()))
    out = tmp_path / "shoot.zarr"
    assert phos("run", tmp_path / "day1", "--out", out, *FLAGS).returncode == 0
    line = error_line(phos("run", tmp_path / "day2", "--out", out, *FLAGS))
    assert "holds the images of another source" in line and "day1" in line


def test_an_output_url_with_glob_characters_is_refused(tmp_path, pixels):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(_png(pixels))
    assert "glob character" in error_line(phos("run", src, "--out", tmp_path / "run[2].zarr", *FLAGS))


def test_an_input_named_like_the_contact_sheet_does_not_collide_with_it(tmp_path, pixels):
    src = tmp_path / "src"
    src.mkdir()
    (src / "contact.jpg").write_bytes(cv2.imencode(".jpg", pixels)[1].tobytes())
    out = tmp_path / "o.zarr"
    proc = phos("run", src, "--out", out, *FLAGS)
    assert proc.returncode == 0, proc.stderr
    assert (out / "icontact.jpg" / "zarr.json").exists() and (out / "_phos" / "contact.jpg").is_file()


def test_an_empty_output_folder_with_os_litter_is_accepted(tmp_path, pixels):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(_png(pixels))
    out = tmp_path / "o.zarr"
    out.mkdir()
    (out / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    assert phos("run", src, "--out", out, *FLAGS).returncode == 0


def test_a_jpeg_padded_with_megabytes_of_fill_bytes_is_sized_quickly():
    from phos_dask.headers import from_bytes, read_header

    jpeg = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    data = jpeg[:2] + b"\xff" * (4 << 20) + jpeg[2:]
    t0 = time.perf_counter()
    assert read_header(from_bytes(data)).upright == (8, 8)
    assert time.perf_counter() - t0 < 0.5  # generous: it is a few milliseconds


def test_a_pam_file_is_sized():
    from phos_dask.headers import from_bytes, read_header

    data = b"P7\nWIDTH 5\nHEIGHT 3\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n" + bytes(45)
    assert read_header(from_bytes(data)).upright == (3, 5)


def _interrupt_before_the_call_starts(set_up_as_the_command_does: bool) -> list[str]:
    """A client call (distributed's `sync`) interrupted by Ctrl-C while its event loop is still busy, so the
    call's coroutine has not started when its cancel callback runs. The errors Tornado logged."""
    import threading

    from distributed.utils import LoopRunner, sync

    from phos_dask import interrupts

    logger = logging.getLogger("tornado.application")
    kept, filters = _Kept(), list(logger.filters)
    logger.addHandler(kept)
    runner = LoopRunner(asynchronous=False)
    runner.start()
    # Python's own Ctrl-C, as in the command's process (an earlier test may have imported a library that
    # installs its own handler: dask_jobqueue's runner exits on SIGINT)
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if set_up_as_the_command_does:
            interrupts.quiet_interrupts()
        runner.loop.add_callback(time.sleep, 0.5)  # the loop is busy: the call below queues behind this
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()  # Ctrl-C

        async def call() -> None:
            await asyncio.sleep(0)

        with pytest.raises(KeyboardInterrupt):
            sync(runner.loop, call)
        time.sleep(1.0)  # the loop runs the call's start, then its cancel
    finally:
        signal.signal(signal.SIGINT, handler)
        runner.stop()
        logger.removeHandler(kept)
        for added in [f for f in logger.filters if f not in filters]:
            logger.removeFilter(added)
    return [f"{r.getMessage()} {r.exc_info[1]!r}" for r in kept.records if r.levelno >= logging.ERROR]


def test_ctrl_c_before_a_client_call_has_started_logs_no_traceback_in_the_command():
    # Dask's own race: its cancel callback reads a variable the call has not assigned yet
    (error,) = _interrupt_before_the_call_starts(False)
    assert "NameError" in error
    assert _interrupt_before_the_call_starts(True) == []
