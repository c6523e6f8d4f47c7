"""The command line, run as users run it: `python -m phos_dask …` in a subprocess."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from phos_dask import Settings, all_stocks
from phos_dask.cli import add_render_arguments, settings_from_args
from phos_dask.imageio import read_image, write_image

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def phos(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "phos_dask", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("phos_dask: error: ")
    return lines[0]


@pytest.fixture(scope="module")
def small_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64×96 crop of the coffee photograph (cup rim: bright and dark areas), as PNG."""
    crop = read_image(EXAMPLES / "coffee.jpg")[120:184, 250:346]
    return write_image(tmp_path_factory.mktemp("cli") / "coffee_crop.png", crop)


def test_films_table_lists_every_stock() -> None:
    proc = phos("films")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    stocks = all_stocks()
    assert len(stocks) == 16
    assert len(lines) == 1 + len(stocks)  # header + one row per stock
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == set(stocks)
    for name, stock in stocks.items():
        fields = rows[name].split()
        assert fields[1] == ("colour" if stock.is_color else "B&W")
        assert fields[2] == str(stock.iso)
        assert rows[name].rstrip().endswith(stock.character)


def test_films_json() -> None:
    proc = phos("films", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["name"] for r in rows] == list(all_stocks())
    for r in rows:
        stock = all_stocks()[r["name"]]
        assert r == {"name": stock.name, "kind": stock.kind, "iso": stock.iso, "character": stock.character}
    assert sum(r["kind"] == "bw" for r in rows) == 5


def test_preview_colour_stock(tmp_path: Path, small_image: Path) -> None:
    out = tmp_path / "deep" / "er" / "portra.png"
    proc = phos("preview", small_image, "-o", out, "--film", "portra400", "--seed", "7")
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout and "96x64" in proc.stdout
    img = read_image(out)
    src = read_image(small_image)
    assert img.shape == (64, 96, 3) and img.dtype == np.uint8
    assert np.abs(img.astype(int) - src).mean() > 2  # the film look changed the picture …
    assert np.corrcoef(img[..., 1].ravel(), src[..., 1].ravel())[0, 1] > 0.8  # … but it is still the picture


def test_preview_of_a_local_file_imports_neither_dask_nor_fsspec(tmp_path: Path, small_image: Path) -> None:
    """`preview` renders one local file: Dask's configuration (which `run`'s flags show) and fsspec (for
    buckets) are 0.25 s of imports it does not need."""
    out = tmp_path / "p.jpg"
    code = ("import sys\n"
            "from phos_dask.cli import main\n"
            f"assert main(['preview', {str(small_image)!r}, '-o', {str(out)!r}, '--film', 'Portra400']) == 0\n"
            "print(sorted(m for m in ('dask', 'distributed', 'fsspec') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]" and out.exists()


def test_preview_of_a_jpeg_loads_neither_opencv_nor_tifffile(tmp_path: Path) -> None:
    """A JPEG is decoded and written by libjpeg-turbo (imagecodecs): OpenCV's import and tifffile's (about
    0.05 s together) would only come before the kernels' loading that `preview` waits for. OpenCV loads when
    one of its decoders is needed (`test_preview_colour_stock` reads a PNG), silenced by the environment
    `preview` leaves for it; the other commands load it at once."""
    out = tmp_path / "p.jpg"
    code = ("import os, sys\n"
            "from phos_dask.cli import main\n"
            f"assert main(['preview', {str(EXAMPLES / 'coffee.jpg')!r}, '-o', {str(out)!r}, '--film', 'Portra400']) "
            "== 0\n"
            "print(sorted(m for m in ('cv2', 'tifffile') if m in sys.modules), os.environ['OPENCV_LOG_LEVEL'])\n"
            "main(['films'])\n"
            "print('cv2' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert "[] SILENT" in lines and lines[-1] == "True" and out.exists()
    assert read_image(out).shape == read_image(EXAMPLES / "coffee.jpg").shape


@pytest.mark.parametrize("command", ["films", "info", "preview", "run", "export"])
def test_each_command_parses_and_helps_alone_and_the_top_level_help_lists_them_all(command: str) -> None:
    """The parser built for one command line has that command's flags (the others only their one-line help);
    `phos_dask --help` lists every command."""
    from phos_dask.flags import SUB_COMMANDS, build_parsers

    full = build_parsers()
    alone = build_parsers([command, "--help"])
    sub = full.main._subparsers._group_actions[0].choices
    alone_sub = alone.main._subparsers._group_actions[0].choices
    assert list(alone_sub) == list(SUB_COMMANDS)
    assert alone_sub[command].format_help() == sub[command].format_help()
    top = " ".join(phos("--help").stdout.split())
    for name, text in SUB_COMMANDS.items():
        assert f"{name} {text}" in top


def test_preview_uint16_tiff_and_working_size(tmp_path: Path, small_image: Path) -> None:
    out = tmp_path / "ektar.tif"
    proc = phos(
        "preview", small_image, "-o", out, "--film", "Ektar100", "--working-size", "32", "--grain", "none"
    )
    assert proc.returncode == 0, proc.stderr
    img = read_image(out)
    assert img.dtype == np.uint16  # .tif defaults to 16 bit
    assert img.shape == (32, 48, 3)


def test_preview_bw_stock_writes_grey(tmp_path: Path, small_image: Path) -> None:
    out = tmp_path / "hp5.jpg"
    proc = phos("preview", small_image, "-o", out, "--film", "HP5Plus400")
    assert proc.returncode == 0, proc.stderr
    img = read_image(out)
    assert img.shape == (64, 96) and img.dtype == np.uint8


def test_unknown_stock_lists_valid_names(tmp_path: Path, small_image: Path) -> None:
    out = tmp_path / "x.jpg"
    proc = phos("preview", small_image, "-o", out, "--film", "Kodachrome64")
    line = assert_one_line_error(proc)
    assert "Kodachrome64" in line
    for name in all_stocks():
        assert name in line
    assert not out.exists()


def test_missing_input_file(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_photo.jpg"
    proc = phos("preview", missing, "-o", tmp_path / "x.jpg", "--film", "Portra400")
    line = assert_one_line_error(proc)
    assert str(missing) in line and "no such file" in line


def test_corrupt_input_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    proc = phos("preview", bad, "-o", tmp_path / "x.jpg", "--film", "Portra400")
    line = assert_one_line_error(proc)
    assert str(bad) in line and "PNG" in line


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["-o", "x.jpg", "--dtype", "uint16"], ".jpg holds uint8 data, got uint16"),
        (["-o", "x.gif"], "x.gif': unsupported extension '.gif'"),
        (["-o", "x.jpg", "--scattering", "1.5"], "scattering must be between 0 and 1"),
        (["-o", "x.jpg", "--grain", "heavy"], "argument --grain: invalid choice: 'heavy'"),
        (["-o", "x.jpg", "--seed", "-1"], "seed must be an integer between 0 and 2**64-1"),
    ],
)
def test_invalid_settings_are_one_line_errors(
    tmp_path: Path, small_image: Path, flags: list[str], expected: str
) -> None:
    flags = [str(tmp_path / f) if f.startswith("x.") else f for f in flags]
    proc = phos("preview", small_image, "--film", "Portra400", *flags)
    assert expected in assert_one_line_error(proc)
    assert list(tmp_path.iterdir()) == []


def test_settings_from_args_maps_every_flag() -> None:
    parser = argparse.ArgumentParser()
    add_render_arguments(parser)
    args = parser.parse_args(
        ["--film", "cinestill800t", "--grain", "coarse", "--grain-size", "2.5", "--grain-intensity", "1.2",
         "--seed", "0xff", "--scattering", "0.1", "--exposure-time", "30", "--film-format", "6x7",
         "--working-size", "1000", "--dtype", "float32", "--no-hd-curve", "--linear-input"]
    )
    st = settings_from_args(args, image_key="a/b.jpg")
    assert st == Settings(
        film="cinestill800t", grain="coarse", grain_size=2.5, grain_intensity=1.2, seed=255,
        image_key="a/b.jpg", scattering=0.1, exposure_time=30.0, film_format="6x7", working_size=1000,
        dtype="float32", hd_curve=False, linear_input=True,
    )
    # every Settings field is reachable from the flags (a new field must get a flag too)
    assert {f.name for f in dataclasses.fields(Settings)} - set(vars(args)) == {"image_key"}
    # without the optional flags, the Settings defaults apply; the dtype fallback is the command's
    defaults = settings_from_args(parser.parse_args(["--film", "NC200"]), image_key="k", dtype="uint16")
    assert defaults == Settings(film="NC200", image_key="k", dtype="uint16")


# ------------------------------------------------------------------------------ export, run --export


def test_parse_storage_options() -> None:
    from phos_dask.cli import CLIError, parse_storage_options

    got = parse_storage_options(["anon=true", "client_kwargs.endpoint_url=http://127.0.0.1:9000",
                                 "client_kwargs.region_name=eu", "block_size=5242880", "token=abc=d",
                                 'profile="123"', "config_kwargs.retries={\"max_attempts\": 3}"])
    assert got == {"anon": True, "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "eu"},
                   "block_size": 5242880, "token": "abc=d", "profile": "123",
                   "config_kwargs": {"retries": {"max_attempts": 3}}}
    assert parse_storage_options([]) == {}
    for bad in (["anon"], ["=1"], ["a..b=1"], ["a=1", "a=2"], ["a=1", "a.b=2"]):
        with pytest.raises(CLIError):
            parse_storage_options(bad)


def test_export_of_a_missing_store_is_a_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.zarr"
    line = assert_one_line_error(phos("export", missing, "--to", tmp_path / "d", "--format", "png"))
    assert str(missing) in line and "no output store" in line
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["export", "{out}", "--to", "{d}", "--format", "gif"], "argument --format: invalid choice: 'gif'"),
        (["export", "{out}", "--to", "{d}", "--format", "jpeg", "--quality", "0"], "between 1 and 100"),
        (["export", "{out}", "--format", "jpeg"], "--to"),
        (["run", "{src}", "--out", "{out}", "--film", "Portra400", "--export", "jpeg"],
         "--export and --export-dir go together"),
        (["run", "{src}", "--out", "{out}", "--film", "Portra400", "--export-dir", "{d}"],
         "--export and --export-dir go together"),
        (["run", "{src}", "--out", "{out}", "--film", "Portra400", "--storage-option", "anon"],
         "expected KEY=VALUE"),
    ],
)
def test_export_flag_errors_are_one_line(tmp_path: Path, small_image: Path, args: list[str], words: str) -> None:
    args = [a.format(out=tmp_path / "o.zarr", d=tmp_path / "d", src=small_image) for a in args]
    assert words in assert_one_line_error(phos(*args))
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "d").exists()


def test_run_with_globs_export_and_contact_sheet_then_export(tmp_path: Path, small_image: Path) -> None:
    src = tmp_path / "src"
    (src / "sub dir").mkdir(parents=True)
    crop = read_image(small_image)
    write_image(src / "a.png", crop)
    write_image(src / "sub dir" / "b.jpg", crop[::-1])
    write_image(src / "skip_me.png", crop[:, ::-1])
    write_image(src / "c.tif", crop)
    out, exported = tmp_path / "out.zarr", tmp_path / "jpeg"
    proc = phos("run", src, "--out", out, "--film", "Portra400", "--workers", "2",
                "--dashboard-address", "127.0.0.1:0", "--json", "--export", "jpeg", "--export-dir", exported,
                "--exclude", "skip_*", "--include", "*.png", "--include", "sub dir/*")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    report = json.loads((out / "_phos" / "report.json").read_text())
    assert sorted(r["source"] for r in report["images"]) == ["a.png", "sub dir/b.jpg"]
    files = sorted(p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file())
    assert files == ["a.jpg", "sub dir/b.jpg"]
    assert read_image(exported / "a.jpg").shape == (64, 96, 3)
    assert f"contact sheet: {out / '_phos' / 'contact.jpg'}" in proc.stderr.splitlines()
    assert read_image(out / "_phos" / "contact.jpg").ndim == 3
    assert "exported 2 image(s) as jpeg" in proc.stderr

    tiffs = tmp_path / "tiff"
    again = phos("export", out, "--to", tiffs, "--format", "tiff16")
    assert again.returncode == 0, again.stderr
    assert read_image(tiffs / "sub dir" / "b.tif").dtype == np.uint16

    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "sub dir").write_text("a file where the folder should be")
    partial = phos("export", out, "--to", blocked, "--format", "png")
    assert partial.returncode == 1, partial.stderr
    failed = [line for line in partial.stderr.splitlines() if line.startswith("phos_dask: failed:")]
    assert len(failed) == 1 and failed[0].startswith("phos_dask: failed: sub_dir__b.jpg: export: ")
    assert (blocked / "a.png").is_file() and "Traceback" not in partial.stderr


def test_run_as_typed_with_only_a_source_uses_nc200_and_writes_beside_the_source(tmp_path: Path,
                                                                                  small_image: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    write_image(photos / "a.png", read_image(small_image))
    proc = phos("run", photos, "--workers", "1", "--dashboard-address", "127.0.0.1:0")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("film: NC200 (the default")
    assert lines[1] == f"out: {tmp_path / 'photos.zarr'} (beside the source; choose another with --out)"
    import zarr

    group = zarr.open_group(str(tmp_path / "photos.zarr" / "a.png"), mode="r")
    assert group.attrs["phos"]["status"] == "complete" and group.attrs["phos"]["stock"] == "NC200"
    assert (tmp_path / "photos.zarr" / "_phos" / "contact.jpg").exists()


@pytest.mark.parametrize(("source", "out"), [
    ("s3://b/photos/", "s3://b/photos.zarr"),
    ("s3://b/2026/photos", "s3://b/2026/photos.zarr"),
    ("gs://b/scans/a.tif", "gs://b/scans/a.zarr"),
])
def test_the_default_output_sits_beside_a_remote_source(source: str, out: str) -> None:
    from phos_dask.runner import default_out

    assert default_out(source) == out


def test_a_bucket_root_without_out_is_one_line_asking_for_out() -> None:
    line = assert_one_line_error(phos("run", "s3://archive/", "--film", "Portra400"))
    assert "bucket's root" in line and "--out" in line


def _exit_script(body: str, code: int) -> subprocess.CompletedProcess[str]:
    """`body`, then leave(code) as `python -m phos_dask` leaves after its command: this process is the
    program. "the ordinary exit" is printed when leave ends it with SystemExit (and the teardown)."""
    script = ("import atexit, sys, threading, time\n"
              "import phos_dask.__main__ as m\n"
              "sys.argv[0] = m.__file__\n" + body +
              f"try:\n    m.leave({code})\n"
              "except SystemExit:\n    print('the ordinary exit', flush=True)\n")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)


def test_the_command_exits_with_its_code_after_its_exit_handlers_and_all_its_output() -> None:
    proc = _exit_script("atexit.register(print, 'handler ran')\n"
                        "print('partial line', end='')\n", 3)
    assert proc.returncode == 3
    assert proc.stdout == "partial linehandler ran\n"


def test_the_command_waits_for_a_thread_still_at_work_before_it_exits() -> None:
    proc = _exit_script("def work():\n"
                        "    time.sleep(0.5)\n"
                        "    print('thread finished', flush=True)\n"
                        "threading.Thread(target=work).start()\n", 0)
    assert proc.returncode == 0
    assert proc.stdout == "the ordinary exit\nthread finished\n"


def test_the_command_run_inside_another_program_hands_it_back_its_exit() -> None:
    script = ("import runpy, sys\n"
              "sys.argv = ['phos_dask', 'films', '--json']\n"
              "try:\n    runpy.run_module('phos_dask', run_name='__main__')\n"
              "except SystemExit as e:\n    print('caller resumed with', e.code)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().endswith("caller resumed with 0")
