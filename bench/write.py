"""Benchmark of the file writers of `preview` and `export`: a 24 MP 16-bit RGB image written as PNG and TIFF.

Usage (from the repository root):

    .venv/bin/python bench/write.py [--repeats 5] [--size 6000x4000] [--image PHOTO] [--out-dir bench/results]

The image: the photograph (``../shared/parity/coffee_3000x2000.jpg``, else ``examples/*.jpg``) enlarged with
``cv2.INTER_CUBIC`` to the size, ×257 to 16 bits, plus Gaussian noise of σ = 600 codes (about 2.3 8-bit
codes, like film grain; seed 0), so the low bytes are as incompressible as a grainy render's.

Timed, in rounds that alternate the writers (so each ratio comes from the same minutes of a shared machine):
``imageio.write_image`` (what ``preview`` calls: `phos_dask.encode.encode`, then the bytes written beside the
target and renamed; into the page cache, no fsync) as 16-bit PNG, 16-bit TIFF and 8-bit PNG (the image
>> 8), and the previous PNG encoder (OpenCV's libpng through ``cv2.imencodeWithMetadata``, the same profile,
its default level 1 / run-length / Sub settings) written the same way. Best of ``--repeats`` wall seconds
each, with the process CPU seconds of that round (CPU > wall: more than one core worked).

Checks on the written 16-bit and 8-bit PNGs: they decode bit-exactly with OpenCV and imagecodecs (libpng;
libspng for 8-bit only: imagecodecs' libspng decoder refuses 16-bit colour, OpenCV's files too); Pillow
reads 48-bit RGB as 8-bit RGB (it has no 16-bit colour mode), so its pixels must equal the image's high
bytes; every chunk's CRC and the zlib stream's Adler-32 (Python's zlib) hold; the iCCP profile is the
encoder's. ``pngcheck`` runs too when it is installed.

Prints a table and writes ``bench/results/write-<UTC timestamp>.json`` with the machine. Target (issue 14):
a 24 MP 16-bit PNG or TIFF written in ≤ 1 s. Exit status 0, or 1 when a check failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
SIZE = (6000, 4000)
#: Grain-like noise added to the 16-bit image, in 16-bit codes (σ).
NOISE_SIGMA = 600.0
#: Target: seconds to write a 24 MP 16-bit PNG or TIFF.
TARGET_SECONDS = 1.0


def machine() -> dict[str, Any]:
    """bench/engine.py's machine description, plus the codec versions that matter here."""
    import imagecodecs
    import PIL
    import tifffile

    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    from engine import machine as engine_machine

    m = engine_machine()
    m.update({"zlib": zlib.ZLIB_RUNTIME_VERSION, "imagecodecs": imagecodecs.__version__,
              "libpng_imagecodecs": imagecodecs.png_version(), "tifffile": tifffile.__version__,
              "pillow": PIL.__version__, "load_average_at_start": list(os.getloadavg())})
    return m


def make_image(source: Path, width: int, height: int) -> np.ndarray:
    """The bench image: `source` enlarged bicubically to width×height, ×257, plus grain-like noise, uint16."""
    import cv2

    from phos_dask.imageio import read_image

    big = cv2.resize(read_image(source), (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    big *= 257.0
    big += np.random.default_rng(0).normal(0.0, NOISE_SIGMA, big.shape).astype(np.float32)
    return np.clip(big, 0.0, 65535.0).astype(np.uint16)


def opencv_png(image: np.ndarray) -> bytes:
    """The previous PNG encoder: OpenCV's libpng writer (its defaults: level 1, run-length, Sub), the profile
    in an iCCP chunk."""
    import cv2

    from phos_dask.encode import icc_profile

    icc = icc_profile(3 if image.ndim == 3 else 1)
    pixels = np.ascontiguousarray(image if image.ndim == 2 else image[:, :, ::-1])
    ok, buf = cv2.imencodeWithMetadata(".png", pixels, [cv2.IMAGE_METADATA_ICCP], [np.frombuffer(icc, np.uint8)],
                                       [])
    if not ok:
        raise RuntimeError("cv2.imencodeWithMetadata failed")
    return buf.tobytes()


def png_chunks(data: bytes) -> list[tuple[bytes, bytes, bool]]:
    """(type, data, CRC ok) of each chunk of a PNG file."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG signature")
    out, at = [], 8
    while at < len(data):
        (n,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + n]
        (crc,) = struct.unpack(">I", data[at + 8 + n : at + 12 + n])
        out.append((kind, body, crc == zlib.crc32(kind + body)))
        at += 12 + n
    return out


def check_png(path: Path, image: np.ndarray) -> dict[str, Any]:
    """Decode the written PNG with every reader at hand; True where the pixels (and profile) are right."""
    import io

    import cv2
    import imagecodecs
    from PIL import Image

    from phos_dask.encode import icc_profile

    data = path.read_bytes()
    colour = image.ndim == 3
    result: dict[str, Any] = {}
    got = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    result["opencv"] = bool(np.array_equal(got[:, :, ::-1] if colour else got, image))
    result["imagecodecs_libpng"] = bool(np.array_equal(imagecodecs.png_decode(data), image))
    if image.dtype == np.uint8:  # imagecodecs' libspng decoder refuses 16-bit colour (OpenCV's files too)
        result["imagecodecs_libspng"] = bool(np.array_equal(imagecodecs.spng_decode(data), image))
    with Image.open(io.BytesIO(data)) as im:
        want = (image >> 8).astype(np.uint8) if colour and image.dtype == np.uint16 else image
        result["pillow"] = bool(np.array_equal(np.asarray(im), want))
        result["pillow_icc"] = im.info.get("icc_profile") == icc_profile(3 if colour else 1)
    chunks = png_chunks(data)
    result["chunk_crcs"] = all(ok for _, _, ok in chunks)
    stream = b"".join(body for kind, body, _ in chunks if kind == b"IDAT")
    try:
        raw = zlib.decompress(stream)  # checks the Adler-32
        result["zlib_adler32"] = len(raw) == image.shape[0] * (image[0].nbytes + 1)
    except zlib.error:
        result["zlib_adler32"] = False
    result["idat_chunks"] = sum(kind == b"IDAT" for kind, _, _ in chunks)
    if shutil.which("pngcheck"):
        proc = subprocess.run(["pngcheck", str(path)], capture_output=True, text=True)
        result["pngcheck"] = proc.returncode == 0
        result["pngcheck_says"] = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr
    return result


def _size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, metavar="R", help="rounds; the best of each writer counts")
    parser.add_argument("--size", type=_size, default=SIZE, help="WIDTHxHEIGHT (6000x4000)")
    parser.add_argument("--image", type=Path, default=None, help="source photograph (default: coffee)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    from phos_dask.imageio import write_image
    from phos_dask.storage import write_atomic

    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    from archive import _default_source

    source = args.image or _default_source()
    started = dt.datetime.now(dt.UTC)
    image = make_image(source, *args.size)
    image8 = (image >> 8).astype(np.uint8)
    mp = image.shape[0] * image.shape[1] / 1e6

    def opencv_write(path: Path) -> None:
        write_atomic(str(path), opencv_png(image))

    writers: dict[str, tuple[str, Callable[[Path], Any]]] = {
        "png16": (".png", lambda p: write_image(p, image)),
        "png16_opencv_before": (".png", opencv_write),
        "tiff16": (".tif", lambda p: write_image(p, image)),
        "png8": (".png", lambda p: write_image(p, image8)),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in writers}
    sizes: dict[str, int] = {}
    checks: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="phos-write-bench-") as tmp:
        for r in range(args.repeats):
            order = list(writers) if r % 2 == 0 else list(reversed(writers))
            for name in order:
                ext, write = writers[name]
                path = Path(tmp) / f"{name}{ext}"
                c0, t0 = time.process_time(), time.perf_counter()
                write(path)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                times[name].append((wall, cpu))
                sizes[name] = path.stat().st_size
                if r == 0 and name in ("png16", "png8"):
                    checks[name] = check_png(path, image if name == "png16" else image8)
                path.unlink()
            print(f"round {r + 1}: " + ", ".join(f"{n} {times[n][-1][0]:.3f} s" for n in writers), flush=True)

    best = {name: min(ts) for name, ts in times.items()}
    rows = {name: {"best_s": round(best[name][0], 4), "cpu_s_of_best": round(best[name][1], 4),
                   "seconds": [round(w, 4) for w, _ in times[name]], "bytes": sizes[name],
                   "mb_per_mp": round(sizes[name] / 1e6 / mp, 4)} for name in writers}
    ratio = best["png16"][0] / best["png16_opencv_before"][0]
    size_ratio = sizes["png16"] / sizes["png16_opencv_before"]
    bit_exact = ("opencv", "imagecodecs_libpng", "imagecodecs_libspng", "pillow", "pillow_icc", "chunk_crcs",
                 "zlib_adler32", "pngcheck")
    checks_ok = all(c.get(k, True) for c in checks.values() for k in bit_exact)
    per_24 = 24.0 / mp
    verdict = {
        "png16_met": best["png16"][0] * per_24 <= TARGET_SECONDS,
        "tiff16_met": best["tiff16"][0] * per_24 <= TARGET_SECONDS,
        "png_checks_pass": checks_ok,
        "default_size": tuple(args.size) == SIZE,
    }
    report = {
        "benchmark": "write: imageio.write_image (preview's writer) of a 16-bit RGB image as PNG and TIFF",
        "date_utc": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "inputs": {"source": str(source), "width": args.size[0], "height": args.size[1], "megapixels": mp,
                   "dtype": "uint16", "noise_sigma_codes": NOISE_SIGMA, "noise_seed": 0},
        "method": (f"{args.repeats} rounds alternating the writers' order; each write_image into a temporary "
                   "folder (encode, write beside, rename; page cache, no fsync), wall and process CPU seconds; "
                   "best wall of each writer"),
        "targets": {"seconds_per_24mp": TARGET_SECONDS},
        "verdict": verdict,
        "writers": rows,
        "png16_vs_opencv": {"time_ratio": round(ratio, 4), "size_ratio": round(size_ratio, 5)},
        "checks": checks,
    }
    from engine import write_report  # bench/ is on sys.path: machine() put it there

    path = write_report(args.out_dir, "write", started, report)

    m = report["machine"]
    print(f"machine: {m['cpu_model']}, {m['cpus_usable']} CPUs usable, load {m['load_average_at_start'][0]:.1f}, "
          f"python {m['python']}, zlib {m['zlib']}, imagecodecs {m['imagecodecs']}, git {m['git']}")
    print(f"{'writer':22s} {'best s':>8s} {'cpu s':>7s} {'MB':>8s}")
    for name, row in rows.items():
        print(f"{name:22s} {row['best_s']:8.3f} {row['cpu_s_of_best']:7.3f} {row['bytes'] / 1e6:8.2f}")
    print(f"png16 vs the previous OpenCV encoder: {ratio:.2f}× the time, {size_ratio:.4f}× the size")
    for name, c in checks.items():
        print(f"{name} decodes: " + ", ".join(f"{k} {'ok' if c[k] else 'FAIL'}" for k in bit_exact if k in c))
    if not verdict["default_size"]:
        print("note: non-default size; the target is for 6000×4000")
    print(f"target ≤ {TARGET_SECONDS} s per 24 MP: png16 {best['png16'][0] * per_24:.3f} s "
          f"({'met' if verdict['png16_met'] else 'MISSED'}), tiff16 {best['tiff16'][0] * per_24:.3f} s "
          f"({'met' if verdict['tiff16_met'] else 'MISSED'})")
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0 if checks_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
