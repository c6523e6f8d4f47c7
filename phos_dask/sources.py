"""Finding the inputs of a job and sizing them cheaply (header only) before any pixel work."""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import fsspec
import fsspec.utils

from phos_dask.imageio.formats import IMAGE_EXTENSIONS
from phos_dask.storage import Location, options_for, special_kind
from phos_dask.store import unique_keys


@dataclass(frozen=True)
class SourceItem:
    """One input: where it is, its path relative to the source root, its output key, its size and a stamp
    that changes when its content does (local files: modification time in ns; object stores: the ETag)."""

    url: str
    relpath: str
    key: str
    size: int
    stamp: str = ""


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
         exclude: Sequence[str] = (), skip: str | None = None) -> tuple[list[SourceItem], list[Problem]]:
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
            st = os.stat(root)
            base, sizes = os.path.dirname(root.rstrip("/")), {root: (st.st_size, f"mtime:{st.st_mtime_ns}")}
        else:
            base = root.rstrip("/")
            sizes, problems = _walk_local(base, os.path.join(base, skip) if skip else None)
    else:  # one paginated listing; a single object or nothing at all costs one more request
        base = root.rstrip("/")
        sizes = {p: (int(i.get("size") or 0), _stamp(i)) for p, i in fs.find(root, detail=True).items()
                 if i.get("type") != "directory" and p.rstrip("/") != base}
        if not sizes:
            try:
                info = fs.info(root)
            except FileNotFoundError:
                raise FileNotFoundError(f"source {source!r} does not exist") from None
            if info.get("type") == "file":
                base, sizes = os.path.dirname(base), {base: (int(info.get("size") or 0), _stamp(info))}
    found = []
    for path, (size, stamp) in sorted(sizes.items()):
        if Path(path).suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        rel = path[len(base) :].lstrip("/") if path.startswith(base) else Path(path).name
        if any(part.startswith(".") for part in rel.split("/")):
            continue  # hidden files and folders
        if skip and (rel == skip or rel.startswith(skip.rstrip("/") + "/")):
            continue  # the job's own output, inside the source
        if not _selected(rel, include, exclude):
            continue
        found.append((path if local else fs.unstrip_protocol(path), rel, size, stamp))
    problems = sorted((p for p in problems if _selected(p.relpath, (), exclude)),
                      key=lambda p: p.relpath)
    keys = unique_keys([rel for _, rel, _, _ in found])
    return [SourceItem(url, rel, keys[rel], size, stamp) for url, rel, size, stamp in found], problems


def _stamp(info: dict) -> str:
    """What changes with an object's content in a listing: its ETag, else its modification time."""
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return f"etag:{str(etag).strip(chr(34))}"
    mtime = info.get("LastModified") or info.get("mtime") or info.get("last_modified")
    return f"mtime:{mtime}" if mtime else ""


def _walk_local(base: str, skip: str | None = None) -> tuple[dict[str, tuple[int, str]], list[Problem]]:
    """{path: (size, stamp)} of the files under `base` (links followed, the folder `skip` left out) and the
    problems met."""
    sizes: dict[str, tuple[int, str]] = {}
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
                if skip is not None and os.path.abspath(entry.path) == os.path.abspath(skip):
                    continue
                ident = (st.st_dev, st.st_ino)
                if ident in inside:
                    problems.append(Problem(rel(entry.path), "symbolic link loop: it leads back to "
                                            f"{rel(inside[ident]) if inside[ident] != base else 'the source folder'}"
                                            "; not followed"))
                    continue
                stack.append((entry.path, {**inside, ident: entry.path}))
            elif stat.S_ISREG(st.st_mode):
                sizes[entry.path] = (st.st_size, f"mtime:{st.st_mtime_ns}")
            elif (kind := special_kind(st.st_mode)) is not None:
                problems.append(Problem(rel(entry.path), f"not a regular file (it is {kind}); not read"))
    return sizes, problems


def header_shape(data: bytes) -> tuple[int, int] | None:
    """(rows, cols) of the upright image from the bytes of its file (the header alone is read), or None when
    the header does not say (the decoder then refuses the file)."""
    from phos_dask.headers import HeaderError, from_bytes, read_header

    try:
        return read_header(from_bytes(data)).upright
    except HeaderError:
        return None


def probe_shape(url: str, storage_options: dict | None = None) -> tuple[int, int] | None:
    """(rows, cols) of the upright image from its header alone, or None when the header does not say. Reads
    64 KiB blocks as the header needs them (one request for most files); never decodes pixels."""
    from phos_dask.headers import HeaderError, read_header

    try:
        return read_header(Location.of(url, storage_options).reader(), url).upright
    except (HeaderError, OSError):
        return None
