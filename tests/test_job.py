"""Archive jobs on a real multi-process local cluster, into real Zarr stores on disk."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import cv2
import dask.array as da
import numpy as np
import pytest
import zarr
from conftest import make_photo_bucket
from processes import kill_worker_running

from phos_dask import Settings, render, thumbs
from phos_dask.cluster import connect
from phos_dask.imageio import read_image
from phos_dask.job import JobError, JobSpec, dry_run, run_job
from phos_dask.storage import Location
from phos_dask.store import OUTPUT_CODECS
from phos_dask.tiles import MIN_TILE


@pytest.fixture(scope="module")
def client():
    with connect(workers=2, dashboard_address="127.0.0.1:0") as c:
        yield c


@pytest.fixture(scope="module")
def bucket(tmp_path_factory, photo) -> Path:
    return make_photo_bucket(tmp_path_factory.mktemp("job"), photo)


def _levels(out: Path, key: str) -> list[np.ndarray]:
    group = zarr.open_group(str(out), mode="r")[key]
    return [group[str(k)][...] for k in range(len(group.attrs["ome"]["multiscales"][0]["datasets"]))]


@pytest.mark.parametrize("film", ["Portra400", "HP5Plus400"])
def test_tiled_runs_equal_the_whole_image_at_every_tile_size(client, bucket, tmp_path, film):
    st = Settings(film=film, seed=42, dtype="uint16", grain="default")
    outputs = {}
    for tile, whole_limit in [(MIN_TILE, 0.0), (300, 0.0), (1024, 0.0), (4096, 1e9)]:
        out = tmp_path / f"t{tile}.zarr"
        report = run_job(JobSpec(str(bucket), str(out), st, tile=tile, whole_limit_mp=whole_limit), client)
        assert report["counts"] == {"done": 3, "skipped": 0, "failed": 0}
        outputs[tile] = {k: _levels(out, k) for k in ("odd.jpg", "wide.png", "sub_dir__grey.png")}
    # the model run on the whole array in one call is the oracle
    ref = render(read_image(bucket / "wide.png"), st.replace(image_key="wide.png"))
    ref = ref[None] if ref.ndim == 2 else np.moveaxis(ref, -1, 0)
    for tile, levels in outputs.items():
        np.testing.assert_array_equal(levels["wide.png"][0], ref, err_msg=f"tile {tile}")
        for key in levels:
            assert len(levels[key]) == len(outputs[4096][key])
            for a, b in zip(levels[key], outputs[4096][key], strict=True):
                np.testing.assert_array_equal(a, b, err_msg=f"{key} tile {tile}")
    assert outputs[4096]["wide.png"][0].shape == ((3 if film == "Portra400" else 1), 2000, 3001)
    assert len(outputs[4096]["wide.png"]) == 3  # 3001 → 1501 → 751 px


@pytest.mark.parametrize("whole_limit", [1e9, 0.0], ids=["whole", "tiled"])
def test_the_compression_changes_the_bytes_stored_never_the_pixels(client, bucket, tmp_path, whole_limit):
    """`--compression` lz4 (default), zstd or none: every level of every image (whole, or written by tiles and
    then finished) holds the same pixels; each array's zarr.json names its codec; zstd stores the fewest
    bytes and none the most."""
    st = Settings(film="Portra400", dtype="uint8")
    sizes, levels = {}, {}
    for compression in ("lz4", "zstd", "none"):
        out = tmp_path / f"{compression}.zarr"
        spec = JobSpec(str(bucket), str(out), st, tile=MIN_TILE, whole_limit_mp=whole_limit, compression=compression)
        report = run_job(spec, client)
        assert report["counts"] == {"done": 3, "skipped": 0, "failed": 0}
        assert report["compression"] == compression
        levels[compression] = {k: _levels(out, k) for k in ("odd.jpg", "wide.png", "sub_dir__grey.png")}
        blosc = json.loads((out / "wide.png" / "0" / "zarr.json").read_text())["codecs"][0]["configuration"][
            "codecs"][-1]["configuration"]
        assert {k: blosc[k] for k in ("cname", "clevel", "shuffle")} == {
            k: OUTPUT_CODECS[compression][k] for k in ("cname", "clevel", "shuffle")}
        sizes[compression] = sum(p.stat().st_size for p in (out / "wide.png").rglob("*")
                                 if p.is_file() and "c" in p.relative_to(out / "wide.png").parts)
    for compression in ("zstd", "none"):
        for key, want in levels["lz4"].items():
            for level, (a, b) in enumerate(zip(levels[compression][key], want, strict=True)):
                np.testing.assert_array_equal(a, b, err_msg=f"{compression} {key} level {level}")
    assert sizes["zstd"] < sizes["lz4"] < sizes["none"], sizes


def test_an_unknown_compression_is_refused_before_anything_is_written(bucket, tmp_path):
    with pytest.raises(JobError, match="unknown compression 'gzip'"):
        run_job(JobSpec(str(bucket), str(tmp_path / "o.zarr"), compression="gzip"))
    assert not (tmp_path / "o.zarr").exists()


def test_output_is_valid_ome_zarr_and_opens_with_plain_zarr_and_dask(client, bucket, tmp_path):
    from ome_zarr_models.v05.image import Image

    out = tmp_path / "ome.zarr"
    run_job(JobSpec(str(bucket), str(out), Settings(dtype="uint16"), tile=512, whole_limit_mp=0.0), client)
    root = zarr.open_group(str(out), mode="r")
    assert root.metadata.zarr_format == 3
    for key in ("odd.jpg", "wide.png", "sub_dir__grey.png"):
        group = root[key]
        Image.from_zarr(group)  # raises on invalid OME-Zarr 0.5 metadata
        arr = da.from_zarr(group["0"])
        assert arr.dtype == np.uint16 and arr.shape[0] == 3
        phos = group.attrs["phos"]
        assert phos["status"] == "complete" and phos["stock"] == "Portra400"
        assert len(phos["source"]["sha256"]) == 64 and phos["halo"] > 0
        assert phos["settings"]["image_key"] == phos["source"]["relpath"]
    assert set(root.attrs["phos"]) == {"version", "settings", "fingerprint", "seed", "source"}  # constant size
    from phos_dask import index
    from phos_dask.storage import Location

    finished, parts = index.read(Location.of(str(out)))
    assert {k: e["relpath"] for k, e in finished.items()} == {
        "odd.jpg": "odd.jpg", "wide.png": "wide.png", "sub_dir__grey.png": "sub dir/grey.png"}
    assert len(parts) == 1
    report = json.loads((out / "_phos" / "report.json").read_text())
    assert {r["status"] for r in report["images"]} == {"done"}
    assert all(r["megapixels"] > 0 and r["seconds"] > 0 for r in report["images"])
    assert not (out / "_phos" / "staging").exists()


def test_rerun_skips_finished_images_and_redoes_a_deleted_one(client, bucket, tmp_path):
    out = tmp_path / "resume.zarr"
    spec = JobSpec(str(bucket), str(out), Settings(seed=7), tile=512, whole_limit_mp=0.5)
    first = run_job(spec, client)
    assert first["counts"]["done"] == 3
    before = {k: _levels(out, k) for k in ("odd.jpg", "wide.png")}
    chunk = out / "wide.png" / "0" / "c" / "0" / "0" / "0"
    stamp = chunk.stat().st_mtime_ns

    again = run_job(spec, client)
    assert again["counts"] == {"done": 0, "skipped": 3, "failed": 0}
    assert chunk.stat().st_mtime_ns == stamp  # not even rewritten

    shutil.rmtree(out / "odd.jpg")
    third = run_job(spec, client)
    assert third["counts"] == {"done": 1, "skipped": 2, "failed": 0}
    assert [r["key"] for r in third["images"] if r["status"] == "done"] == ["odd.jpg"]
    for k in before:
        for a, b in zip(before[k], _levels(out, k), strict=True):
            np.testing.assert_array_equal(a, b)


def test_thumbnails_are_stored_by_the_client_in_one_pack_and_a_replaced_image_loses_its_own(
        client, bucket, tmp_path):
    source = tmp_path / "photos"
    shutil.copytree(bucket, source)
    out = tmp_path / "thumbs.zarr"
    spec = JobSpec(str(source), str(out), Settings(), tile=512, whole_limit_mp=0.5)
    assert run_job(spec, client)["counts"]["done"] == 3
    assert [p.suffix for p in (out / "_phos" / "thumbs").iterdir()] == [".zip"]  # one pack, no object per image
    pairs, _ = thumbs.read_packs(Location.of(str(out)))
    assert sorted(pairs) == ["odd.jpg", "sub_dir__grey.png", "wide.png"]
    _, result = thumbs.decode_pair(pairs["wide.png"])
    level = _levels(out, "wide.png")[-1]
    want = thumbs.result_thumb(level)
    assert result.shape == want.shape and np.abs(result.astype(int) - want).mean() < 4  # the image's own result

    (source / "odd.jpg").write_bytes(b"not a JPEG any more")  # changed: replaced, and now it fails
    rerun = run_job(spec, client)
    assert {r["key"]: r["status"] for r in rerun["images"]}["odd.jpg"] == "failed"
    assert [p.suffix for p in (out / "_phos" / "thumbs").iterdir()] == [".zip"]  # compacted into one again
    pairs, _ = thumbs.read_packs(Location.of(str(out)))
    assert sorted(pairs) == ["sub_dir__grey.png", "wide.png"]  # no stale thumbnail of the replaced image


def test_a_damaged_thumbnail_pack_reads_as_empty():
    assert thumbs.unpack(b"PK\x03\x04 torn") == ({}, [])
    assert thumbs.unpack(thumbs.pack({"a.jpg": b"x"}, removed=["b.png"])) == ({"a.jpg": b"x"}, ["b.png"])


def test_an_incomplete_image_is_redone(client, bucket, tmp_path):
    out = tmp_path / "partial.zarr"
    spec = JobSpec(str(bucket), str(out), Settings(), tile=512, whole_limit_mp=0.0)
    run_job(spec, client)
    # as if the run was killed after some pixels, before the image's marker and before the client wrote
    # the index part that would have named it (the index only ever names images whose marker was written)
    (out / "wide.png" / "zarr.json").unlink()
    zarr.open_array(str(out / "wide.png" / "0"), mode="r+")[:, :100, :100] = 0
    shutil.rmtree(out / "_index")
    rerun = run_job(spec, client)
    assert [r["key"] for r in rerun["images"] if r["status"] == "done"] == ["wide.png"]
    assert [r["key"] for r in rerun["images"] if r["status"] == "skipped"] == ["odd.jpg", "sub_dir__grey.png"]
    assert _levels(out, "wide.png")[0][:, :100, :100].max() > 0


def test_other_settings_on_existing_output_are_refused_unless_overwrite(client, bucket, tmp_path):
    out = tmp_path / "clash.zarr"
    run_job(JobSpec(str(bucket), str(out), Settings(film="Portra400")), client)
    with pytest.raises(JobError, match="--overwrite"):
        run_job(JobSpec(str(bucket), str(out), Settings(film="Velvia50")), client)
    report = run_job(JobSpec(str(bucket), str(out), Settings(film="Velvia50"), overwrite=True), client)
    assert report["counts"]["done"] == 3
    assert zarr.open_group(str(out), mode="r")["odd.jpg"].attrs["phos"]["stock"] == "Velvia50"


def test_one_bad_file_fails_alone(client, bucket, tmp_path):
    src = tmp_path / "mixed"
    shutil.copytree(bucket, src)
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    out = tmp_path / "mixed.zarr"
    report = run_job(JobSpec(str(src), str(out), Settings()), client)
    assert report["counts"] == {"done": 3, "skipped": 0, "failed": 1}
    bad = next(r for r in report["images"] if r["status"] == "failed")
    assert "broken.jpg" in bad["error"] and "\n" not in bad["error"]
    assert zarr.open_group(str(out), mode="r")["odd.jpg"].attrs["phos"]["status"] == "complete"


def test_dry_run_plans_without_computing(bucket, tmp_path):
    out = tmp_path / "dry.zarr"
    plan = dry_run(JobSpec(str(bucket), str(out), Settings(dtype="uint16"), tile=1024, whole_limit_mp=0.0))
    rows = {r["key"]: r for r in plan["plan"]}
    assert rows["wide.png"]["tiles"] == 6 and rows["wide.png"]["shape"] == [2000, 3001]
    assert rows["wide.png"]["halo"] > 0 and rows["wide.png"]["peak_task_bytes"] > 0
    assert plan["bytes_out"] > 2000 * 3001 * 3 * 2
    assert not out.exists()  # a dry run creates nothing


def test_the_local_cluster_has_single_threaded_workers_with_localclusters_memory_limit_and_serves_the_dashboard(
        client):
    """connect() starts LocalCluster's workers as asked (one thread each, LocalCluster's own per-worker memory
    limit), and the scheduler's HTTP server serves Dask's Bokeh pages beside its plain routes."""
    from distributed.worker_memory import parse_memory_limit

    workers = client.scheduler_info()["workers"].values()
    assert [w["nthreads"] for w in workers] == [1, 1]
    expected = parse_memory_limit("auto", 1, 2, logger=None)
    assert {w["memory_limit"] for w in workers} == {expected}
    base = client.dashboard_link.rsplit("/", 1)[0]
    for page in ("status", "workers", "health"):
        with urllib.request.urlopen(f"{base}/{page}", timeout=30) as r:
            assert r.status == 200, page


LAZY_DASHBOARD = """
import concurrent.futures, sys, urllib.error, urllib.request
from phos_dask.cluster import connect
from phos_dask.dashboard import install

def bokeh():
    return any(m == "bokeh" or m.startswith("bokeh.") for m in sys.modules)

def get(url):
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.status, r.url, r.read().decode()

if __name__ == "__main__":
    with connect(workers=1, dashboard_address="127.0.0.1:0") as client:
        base = client.dashboard_link.rsplit("/", 1)[0]
        assert client.submit(sum, [1, 2]).result() == 3
        install(client)  # the job's page, as run_job installs it
        print("at start", bokeh())
        for page in ("health", "metrics", "phos/status.json"):
            assert get(f"{base}/{page}")[0] == 200, page
        print("after plain pages", bokeh())
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            pages = list(pool.map(get, [client.dashboard_link, f"{base}/workers", f"{base}/", f"{base}/tasks"]))
        print("after dashboard pages", bokeh())
        for status, url, body in pages:
            print("page", status, url.rsplit("/", 1)[-1], "bokeh" in body.lower())
        try:
            get(f"{base}/no-such-page")
        except urllib.error.HTTPError as e:
            print("unknown page", e.code)
"""


def test_dasks_dashboard_is_imported_when_its_first_page_is_asked_for_not_as_the_cluster_starts(tmp_path):
    """Bokeh costs the command's process about a second of CPU to import: the local cluster starts without it,
    serves its plain routes (/health, /metrics, the job's /phos) at once, and attaches Dask's dashboard when a
    page of it is first asked for (several at once: one import), which then serves every Bokeh page."""
    script = tmp_path / "lazy.py"
    script.write_text(LAZY_DASHBOARD)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[:3] == ["at start False", "after plain pages False", "after dashboard pages True"]
    assert sorted(lines[3:7]) == ["page 200 status True", "page 200 status True", "page 200 tasks True",
                                  "page 200 workers True"]
    assert lines[7:] == ["unknown page 404"]


def test_the_dashboard_is_served_and_lists_the_job_tasks(client, bucket, tmp_path):
    run_job(JobSpec(str(bucket), str(tmp_path / "dash.zarr"), Settings(), tile=512, whole_limit_mp=0.0), client)
    base = client.dashboard_link.rsplit("/", 1)[0]
    with urllib.request.urlopen(f"{base}/status", timeout=10) as r:
        page = r.read().decode()
    assert r.status == 200 and "bokeh" in page.lower() and "install" not in page.lower()
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    for prefix in ("film-image", "film-tile", "finalize"):
        assert f'task_prefix_name="{prefix}"' in metrics


def test_work_is_submitted_through_a_bounded_window(client, tmp_path, small_photo):
    """A big archive never becomes one big graph: at most `window` images hold futures at a time."""
    from phos_dask.graph import submit_job
    from phos_dask.sources import discover

    src = tmp_path / "many"
    src.mkdir()
    for i in range(8):
        cv2.imwrite(str(src / f"p{i}.png"), np.roll(small_photo, 17 * i, axis=1)[..., ::-1])
    spec = JobSpec(str(src), str(tmp_path / "w.zarr"), Settings())
    alive: list[int] = []
    done: list[str] = []

    def on_result(item, result):
        alive.append(len(client.futures))
        done.append(result.status)

    submit_job(client, spec.config(), discover(str(src)), on_result, window=2)
    assert done == ["done"] * 8
    assert max(alive) <= 2


def test_include_and_exclude_globs_select_inputs(bucket):
    from phos_dask.sources import discover

    everything = {i.relpath for i in discover(str(bucket))}
    assert everything == {"odd.jpg", "wide.png", "sub dir/grey.png"}
    assert {i.relpath for i in discover(str(bucket), include=["*.png"])} == {"wide.png", "sub dir/grey.png"}
    assert {i.relpath for i in discover(str(bucket), exclude=["sub dir/*"])} == {"odd.jpg", "wide.png"}
    assert {i.relpath for i in discover(str(bucket), include=["*.png"], exclude=["wide.*"])} == {"sub dir/grey.png"}


def test_sixteen_bit_precision_is_kept_end_to_end(client, tmp_path):
    """A 16-bit gradient comes out of a uint16 run smooth: thousands of levels, not 8-bit steps."""
    src = tmp_path / "grad"
    src.mkdir()
    ramp = np.linspace(0, 65535, 4096).round().astype(np.uint16)
    img = np.repeat(np.repeat(ramp[None, :, None], 64, axis=0), 3, axis=2)
    assert cv2.imwrite(str(src / "ramp16.png"), img)
    out = tmp_path / "grad.zarr"
    report = run_job(JobSpec(str(src), str(out), Settings(dtype="uint16", grain="none")), client)
    assert report["counts"]["done"] == 1
    row = zarr.open_group(str(out), mode="r")["ramp16.png"]["0"][1, 32, :]
    assert len(np.unique(row)) > 2000
    assert np.all(np.diff(row.astype(np.int64)) >= 0)  # still a ramp: the film curve is monotone


def test_file_urls_are_sources_too(bucket):
    from phos_dask.sources import discover

    as_path = [(i.relpath, i.size) for i in discover(str(bucket))]
    assert [(i.relpath, i.size) for i in discover(f"file://{bucket}")] == as_path


def test_working_size_at_ingest_is_seamless_across_tiles(client, bucket, tmp_path):
    from phos_dask.resample import resample_to

    st = Settings(working_size=700, dtype="uint16", seed=2)
    out = tmp_path / "ws.zarr"
    report = run_job(JobSpec(str(bucket), str(out), st, tile=256, whole_limit_mp=0.0), client)
    assert report["counts"]["done"] == 3
    level0 = zarr.open_group(str(out), mode="r")["wide.png"]["0"][...]
    assert level0.shape == (3, 700, 1050)  # 2000×3001 → short side 700, long side made even
    expected = render(resample_to(read_image(bucket / "wide.png"), 700), st.replace(working_size=None,
                                                                                    image_key="wide.png"))
    np.testing.assert_array_equal(np.moveaxis(level0, 0, -1), expected)


def _items(sizes: list[int]):
    from phos_dask.graph import Todo
    from phos_dask.sources import SourceItem

    return [Todo(SourceItem(f"file:///x/{i}.jpg", f"{i}.jpg", f"{i}.jpg", size)) for i, size in enumerate(sizes)]


def test_small_files_share_tasks_only_when_every_thread_still_gets_several():
    from phos_dask.graph import BATCH_BYTES, MAX_BATCH, SMALL_FILE, TASKS_PER_THREAD, _batches, batch_size

    assert batch_size(0, 2) == batch_size(8 * 2 - 1, 2) == 1  # a short job: a task per image
    assert batch_size(TASKS_PER_THREAD * 2 * 3, 2) == 3
    assert batch_size(10**6, 64) == MAX_BATCH
    small, big = 300_000, SMALL_FILE
    todos = _items([small] * 5 + [big] + [small] * 2)
    groups = [[t.item.key for t in g] for g in _batches(iter(todos), 3)]
    assert groups == [["0.jpg", "1.jpg", "2.jpg"], ["3.jpg", "4.jpg"], ["5.jpg"], ["6.jpg", "7.jpg"]]
    assert [len(g) for g in _batches(iter(todos), 1)] == [1] * 8
    heavy = _items([SMALL_FILE - 1] * 5)  # small each, but three fill a task's bytes
    assert 3 * (SMALL_FILE - 1) <= BATCH_BYTES < 4 * (SMALL_FILE - 1)
    assert [len(g) for g in _batches(iter(heavy), 8)] == [3, 2]


@pytest.fixture(scope="module")
def many(tmp_path_factory, small_photo) -> Path:
    """Twenty small inputs: enough for two to a task on two single-threaded workers."""
    src = tmp_path_factory.mktemp("many") / "src"
    src.mkdir()
    for i in range(20):
        cv2.imwrite(str(src / f"p{i:02d}.jpg"), np.roll(small_photo, 23 * i, axis=1)[..., ::-1])
    return src


@pytest.mark.parametrize("whole_limit", [32.0, 0.1], ids=["whole", "tiled"])
def test_small_files_rendered_several_to_a_task_equal_a_task_each(client, many, tmp_path, whole_limit):
    """Twenty small files on two threads: ten shared tasks of two; every image's levels are those of a task
    each, for images rendered whole and for images that their shared task prepares for tiles."""
    from distributed import get_task_stream

    from phos_dask.graph import submit_job
    from phos_dask.sources import discover

    spec = JobSpec(str(many), str(tmp_path / "batched.zarr"), Settings(film="Portra400", dtype="uint16"),
                   tile=MIN_TILE, whole_limit_mp=whole_limit)
    with get_task_stream(client) as ts:
        report = run_job(spec, client)
    assert report["counts"] == {"done": 20, "skipped": 0, "failed": 0}
    firsts = {r["key"] for r in ts.data if str(r["key"]).startswith("film-image-")}
    assert len(firsts) == 10 and all("-2-images-from-" in str(k) for k in firsts)
    tiles = {r["key"] for r in ts.data if str(r["key"]).startswith("film-tile-")}
    assert (len(tiles) > 20) == (whole_limit < 1)
    one_each = tmp_path / "single.zarr"
    done: list[str] = []
    submit_job(client, dataclasses.replace(spec, out=str(one_each)).config(), discover(str(many)),
               lambda item, result: done.append(result.status))  # no image count: a task each
    assert done == ["done"] * 20
    for item in discover(str(many)):
        batched, single = _levels(tmp_path / "batched.zarr", item.key), _image_levels(one_each, item.key)
        assert len(batched) == len(single) >= 1
        for a, b in zip(batched, single, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=item.key)


def _image_levels(out: Path, key: str) -> list[np.ndarray]:
    """An image's levels read from its own group (a bare submit_job writes no root group)."""
    group = zarr.open_group(str(out / key), mode="r")
    return [group[str(k)][...] for k in range(len(group.attrs["ome"]["multiscales"][0]["datasets"]))]


def test_a_shared_task_lost_with_its_worker_is_run_again_image_by_image(client, many, tmp_path):
    """With no retries left for a task whose worker dies (allowed-failures 0), a shared task fails as a
    whole: its images are submitted again one by one, and all of them end done, as an undisturbed run's."""
    import os
    import threading

    import dask
    from distributed import get_task_stream

    from phos_dask.graph import submit_job
    from phos_dask.sources import discover

    spec = JobSpec(str(many), str(tmp_path / "killed.zarr"), Settings(film="Portra400", dtype="uint16"))
    report: dict = {}
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            connect(workers=2, dashboard_address="127.0.0.1:0") as c, get_task_stream(c) as stream:
        pids = c.run(os.getpid)
        job = threading.Thread(target=lambda: report.update(run_job(spec, c)))
        job.start()
        kill_worker_running(c, pids, job, lambda key: "-images-from-" in key, "shared task", poll=0.005)
        job.join(timeout=300)
        assert not job.is_alive()
    assert report["counts"] == {"done": 20, "skipped": 0, "failed": 0}, report
    alone_keys = [str(r["key"]) for r in stream.data
                  if str(r["key"]).startswith("film-image-") and "-images-from-" not in str(r["key"])]
    # the images of the shared tasks lost with the worker (two each, at most 4 tasks in flight), one by one
    assert len(alone_keys) in (2, 4, 6, 8)
    single = tmp_path / "single.zarr"
    submit_job(client, dataclasses.replace(spec, out=str(single)).config(), discover(str(many)), lambda *a: None)
    for item in discover(str(many)):
        killed, alone = _levels(tmp_path / "killed.zarr", item.key), _image_levels(single, item.key)
        assert len(killed) == len(alone) >= 1
        for a, b in zip(killed, alone, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=item.key)
