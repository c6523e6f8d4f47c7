"""Finding the inputs of a job and sizing them cheaply (header only) before any pixel work."""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import fsspec
import fsspec.utils

from phos_dask.imageio import RAW_EXTENSIONS
from phos_dask.storage import Location, options_for
from phos_dask.store import unique_keys

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".apng", ".gif", ".tif", ".tiff", ".webp", ".bmp", ".jp2", ".pgm", ".ppm",
     ".pnm"}
) | RAW_EXTENSIONS


@dataclass(frozen=True)
class SourceItem:
    """One input: where it is, its path relative to the source root, its output key and its size."""

    url: str
    relpath: str
    key: str
    size: int


def _selected(rel: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Glob patterns match the path relative to the source or the file name alone (`*.tif`, `raw/**`)."""
    def hit(patterns: Sequence[str]) -> bool:
        return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], p) for p in patterns)

    return (not include or hit(include)) and not hit(exclude)


@dataclass(frozen=True)
class Problem:
    """Something under the source that is not an input: one line for the report (path relative to source)."""

    relpath: str
    error: str


def discover(source: str, storage_options: dict | None = None, include: Sequence[str] = (),
             exclude: Sequence[str] = ()) -> list[SourceItem]:
    """Every image file under `source` (a folder, a single file, or an fsspec URL), sorted by path,
    restricted to paths matching any `include` glob and none of the `exclude` globs."""
    return scan(source, storage_options, include, exclude)[0]


def scan(source: str, storage_options: dict | None = None, include: Sequence[str] = (),
         exclude: Sequence[str] = ()) -> tuple[list[SourceItem], list[Problem]]:
    """`discover`'s inputs, and the problems met on the way: folders that cannot be listed, symbolic links
    that loop or point nowhere. Local folders are walked following links to folders (each followed until it
    leads back to a folder it is inside); names starting with '.' (hidden) are left out."""
    fs, root = fsspec.core.url_to_fs(source, **options_for(source, storage_options))
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
    local = protocol in ("file", "local")
    problems: list[Problem] = []
    if local and os.path.lexists(root) and not os.path.exists(root):
        raise FileNotFoundError(f"source {source!r} is a broken or looping symbolic link")
    if local:
        if not os.path.exists(root):
            raise FileNotFoundError(f"source {source!r} does not exist")
        if os.path.isfile(root):
            base, sizes = os.path.dirname(root.rstrip("/")), {root: os.path.getsize(root)}
        else:
            base = root.rstrip("/")
            sizes, problems = _walk_local(base)
    else:  # one paginated listing; a single object or nothing at all costs one more request
        base = root.rstrip("/")
        sizes = {p: int(i.get("size") or 0) for p, i in fs.find(root, detail=True).items()
                 if i.get("type") != "directory" and p.rstrip("/") != base}
        if not sizes:
            try:
                info = fs.info(root)
            except FileNotFoundError:
                raise FileNotFoundError(f"source {source!r} does not exist") from None
            if info.get("type") == "file":
                base, sizes = os.path.dirname(base), {base: int(info.get("size") or 0)}
    found = []
    for path, size in sorted(sizes.items()):
        if Path(path).suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        rel = path[len(base) :].lstrip("/") if path.startswith(base) else Path(path).name
        if any(part.startswith(".") for part in rel.split("/")):
            continue  # hidden files and folders
        if not _selected(rel, include, exclude):
            continue
        found.append((path if local else fs.unstrip_protocol(path), rel, size))
    problems = sorted((p for p in problems if _selected(p.relpath, (), exclude)),
                      key=lambda p: p.relpath)
    keys = unique_keys([rel for _, rel, _ in found])
    return [SourceItem(url, rel, keys[rel], size) for url, rel, size in found], problems


def _walk_local(base: str) -> tuple[dict[str, int], list[Problem]]:
    """{path: size} of the files under `base` (links followed) and the problems met."""
    sizes: dict[str, int] = {}
    problems: list[Problem] = []

    def rel(path: str) -> str:
        return os.path.relpath(path, base).replace(os.sep, "/")

    top = os.stat(base)
    stack: list[tuple[str, dict[tuple[int, int], str]]] = [(base, {(top.st_dev, top.st_ino): base})]
    while stack:
        folder, inside = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            problems.append(Problem(rel(folder), f"cannot list this folder: {e.strerror or e}"))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                st = entry.stat()  # follows links
            except OSError as e:
                if e.errno == errno.ELOOP:
                    problems.append(Problem(rel(entry.path), "symbolic link loop (the link leads to itself)"))
                elif Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
                    problems.append(Problem(rel(entry.path), f"cannot read: {e.strerror or e} (broken link?)"))
                continue
            if stat.S_ISDIR(st.st_mode):
                ident = (st.st_dev, st.st_ino)
                if ident in inside:
                    problems.append(Problem(rel(entry.path), "symbolic link loop: it leads back to "
                                            f"{rel(inside[ident]) if inside[ident] != base else 'the source folder'}"
                                            "; not followed"))
                    continue
                stack.append((entry.path, {**inside, ident: entry.path}))
            elif stat.S_ISREG(st.st_mode):
                sizes[entry.path] = st.st_size
    return sizes, problems


#: Bytes read to find an image's size from its header (JPEG EXIF and PNG/WebP/GIF headers fit).
HEADER_BYTES = 64 << 10


def header_shape(data: bytes) -> tuple[int, int] | None:
    """(rows, cols) of the upright image from the start of its file, or None when that does not tell (a
    damaged header, or a format whose size lies further in, such as some TIFFs)."""
    import io

    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a damaged header: the decoder will report the file
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                orientation = im.getexif().get(0x0112, 1)
    except Exception:
        return None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def probe_shape(url: str, storage_options: dict | None = None) -> tuple[int, int] | None:
    """(rows, cols) of the upright image from its header alone, or None when the header is unreadable
    (the decoder then decides, and reports the error). One ranged GET of HEADER_BYTES; the file is opened
    lazily only when its header lies further in."""
    location = Location.of(url, storage_options)
    try:
        head = location.get("", 0, HEADER_BYTES)
    except OSError:
        return None
    if head is None:
        return None
    shape = header_shape(head)
    if shape is not None or len(head) < HEADER_BYTES:
        return shape
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings(), fsspec.open(url, "rb", **options_for(url, storage_options)) as f:
            warnings.simplefilter("ignore")
            with Image.open(f) as im:
                w, h = im.size
                orientation = im.getexif().get(0x0112, 1)
    except Exception:
        return None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)
