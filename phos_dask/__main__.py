"""`python -m phos_dask`: the command line (see phos_dask.cli)."""

from phos_dask.cli import main

if __name__ == "__main__":  # worker processes spawned by a local cluster import this module too
    raise SystemExit(main())
