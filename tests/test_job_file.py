"""Job files: `run --job FILE` reads run's settings from TOML or JSON, as data; flags on the command line win.
Nothing the tool reads (job files, stocks, stores, reports) is ever executed."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from phos_dask.flags import build_parsers, job_file_values
from phos_dask.options import CLIError

PACKAGE = Path(__file__).resolve().parents[1] / "phos_dask"


def run_flags():
    return build_parsers().run_flags


def dry_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "phos_dask", "run", *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)


def test_a_toml_job_file_becomes_run_defaults_read_as_the_flags_read_them(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text('source = "photos"\nout = "o.zarr"\nfilm = "HP5Plus400"\nworkers = 3\n'
                   'include = ["*.tif", "raw/**"]\nhd-curve = false\noverwrite = true\nmax_pixels = 2e9\n'
                   'compression = "none"\n'
                   '[storage_option]\nanon = true\nclient_kwargs.endpoint_url = "http://127.0.0.1:9000"\n')
    values = job_file_values(str(job), run_flags())
    assert values == {"source": "photos", "out": "o.zarr", "film": "HP5Plus400", "workers": 3,
                      "include": ["*.tif", "raw/**"], "hd_curve": False, "overwrite": True,
                      "max_pixels": 2_000_000_000, "compression": "none",
                      "storage_option": ["anon=true", 'client_kwargs.endpoint_url="http://127.0.0.1:9000"']}
    parsers = build_parsers()
    args = parsers.parse(["run", "--job", str(job), "--include", "x/*", "--workers", "5", "--hd-curve"])
    assert (args.source, args.workers, args.hd_curve, args.max_pixels) == ("photos", 5, True, 2_000_000_000)
    assert args.include == ["*.tif", "raw/**", "x/*"]  # a repeatable flag adds to the file's


def test_the_command_line_wins_over_the_job_file(tmp_path, small_photo):
    from PIL import Image

    (tmp_path / "photos").mkdir()
    Image.fromarray(small_photo).save(tmp_path / "photos" / "a.png")
    (tmp_path / "job.json").write_text(json.dumps({"source": "photos", "out": "o.zarr", "film": "Portra400",
                                                   "working_size": 100}))
    proc = dry_run(tmp_path, "--job", "job.json", "--working-size", "150", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["out"] == "o.zarr" and plan["plan"][0]["shape"] == [150, 226]  # the long side is made even
    assert not (tmp_path / "o.zarr").exists()  # a dry run creates nothing


@pytest.mark.parametrize(("content", "name", "words"), [
    ("wat = 1\n", "job.toml", "unknown key 'wat'"),
    ("film = [\n", "job.toml", "is not valid TOML"),
    ('{"workers": true}', "job.json", "'workers' cannot be true"),
    ("[1, 2]", "job.json", "expected a table"),
    ("import os\n", "job.py", "must be .toml or .json"),
])
def test_a_bad_job_file_is_one_line(tmp_path, content, name, words):
    (tmp_path / name).write_text(content)
    with pytest.raises(CLIError, match=words):
        job_file_values(str(tmp_path / name), run_flags())
    proc = dry_run(tmp_path, "--job", name)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and words in proc.stderr


def test_values_in_a_job_file_are_data_not_code(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "photos").mkdir()
    (tmp_path / "job.toml").write_text(
        f'source = "photos"\nout = "o.zarr"\nfilm = "__import__(\'os\').system(\'touch {marker}\')"\n')
    proc = dry_run(tmp_path, "--job", "job.toml")
    assert proc.returncode == 2 and "unknown film stock" in proc.stderr
    assert not marker.exists()


def test_the_package_never_evaluates_or_unpickles_what_it_reads():
    """No eval/exec/compile/__import__, no pickle/marshal/shelve/yaml loading anywhere in phos_dask: stocks,
    job files, reports and store attributes are read with tomllib and json only."""
    banned_calls = {"eval", "exec", "compile", "__import__"}
    banned_modules = {"pickle", "marshal", "shelve", "yaml", "dill", "cloudpickle"}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in banned_calls, f"{path.name}:{node.lineno} calls {node.func.id}"
            if isinstance(node, ast.Import):
                assert not {a.name.split(".")[0] for a in node.names} & banned_modules, f"{path.name}:{node.lineno}"
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] not in banned_modules, f"{path.name}:{node.lineno}"
    stocks = (PACKAGE / "film" / "stocks.py").read_text()
    assert "tomllib.loads" in stocks
