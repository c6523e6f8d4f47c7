"""Job defaults from Dask's configuration: the `phos_dask` section.

The package's defaults (`phos_dask.yaml` beside this file) are registered with `dask.config.update_defaults`
when this module is imported, so Dask's usual sources override them: the YAML files Dask reads
(`~/.config/dask/*.yaml`, `DASK_CONFIG`), environment variables (`DASK_PHOS_DASK__TILE=1024`) and
`dask.config.set`. `run`'s flags (and its --job file) override the configuration.

Keys (dashes and underscores are the same key to Dask):

* `tile` (px): tile side for images rendered in tiles (`--tile`).
* `whole-limit` (MP): images up to this many megapixels run as one task; 0 = always tile (`--whole-limit`).
* `max-pixels` (px): refuse images whose header claims more pixels; 0 = no limit (`--max-pixels`).
* `compression`: the output's codec, lz4, zstd or none (`--compression`; phos_dask.store.OUTPUT_CODECS).
* `lease-ttl` (s): how long after its last heartbeat `run` treats the output's lease of a run on another
  machine as dead; null = PHOS_DASK_LEASE_TTL, else 60.
* `kernel-threads`: threads of the CPU kernels in each worker task; null = PHOS_DASK_KERNEL_THREADS, else
  1 inside a Dask worker. Read by the workers themselves (a local cluster's workers get `run`'s
  configuration; an external cluster's workers read their own).
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any

import dask.config

from phos_dask.errors import PhosError

SECTION = "phos_dask"
KEYS = ("tile", "whole-limit", "max-pixels", "compression", "lease-ttl", "kernel-threads")


class ConfigError(PhosError, ValueError):
    """A value in the `phos_dask` section of Dask's configuration that cannot be used."""


def _register() -> None:
    # read by Dask's own loader (YAML's safe loader): the package itself parses no YAML
    for defaults in dask.config.collect_yaml([os.path.join(os.path.dirname(__file__), "phos_dask.yaml")]):
        dask.config.update_defaults(defaults)


_register()


def get(key: str) -> Any:
    """The configured value of `phos_dask.<key>` (None when unset)."""
    return dask.config.get(f"{SECTION}.{key}", None)


def _number(key: str, kind: type, low: float, allow_none: bool = False) -> Any:
    value = get(key)
    if value is None and allow_none:
        return None
    if isinstance(value, str):  # e.g. from a YAML file written as text: "1e9"
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"Dask configuration {SECTION}.{key} must be a number, got {value!r} (check "
                          f"DASK_{SECTION.upper()}__{key.upper().replace('-', '_')} and Dask's YAML files)")
    if kind is int:
        if value != int(value):
            raise ConfigError(f"Dask configuration {SECTION}.{key} must be a whole number, got {value!r}")
        value = int(value)
    if value < low:
        raise ConfigError(f"Dask configuration {SECTION}.{key} must be at least {low}, got {value!r}")
    return kind(value)


def tile() -> int:
    """Tile side, px (`phos_dask.tile`)."""
    return _number("tile", int, 1)


def whole_limit() -> float:
    """Whole-image limit, MP (`phos_dask.whole-limit`)."""
    return _number("whole-limit", float, 0)


def max_pixels() -> int:
    """Pixel limit per image (`phos_dask.max-pixels`); 0 = no limit."""
    return _number("max-pixels", int, 0)


def compression() -> str:
    """The output's codec (`phos_dask.compression`): a name in phos_dask.store.OUTPUT_CODECS."""
    from phos_dask.store import OUTPUT_CODECS

    value = get("compression")
    if value not in OUTPUT_CODECS:
        raise ConfigError(f"Dask configuration {SECTION}.compression must be one of {', '.join(OUTPUT_CODECS)}, got "
                          f"{value!r} (check DASK_{SECTION.upper()}__COMPRESSION and Dask's YAML files)")
    return value


def lease_ttl() -> float | None:
    """Lease time to live, s (`phos_dask.lease-ttl`), or None: the package's own (PHOS_DASK_LEASE_TTL / 60)."""
    ttl = _number("lease-ttl", float, 0, allow_none=True)
    if ttl is not None and ttl <= 0:
        raise ConfigError(f"Dask configuration {SECTION}.lease-ttl must be more than 0 s, got {ttl!r}")
    return ttl


def kernel_threads() -> int | None:
    """Kernel threads per task (`phos_dask.kernel-threads`), or None: PHOS_DASK_KERNEL_THREADS / 1 in a worker."""
    return _number("kernel-threads", int, 1, allow_none=True)
