"""`python -m phos_dask`: the command line (see phos_dask.cli)."""

from phos_dask.cli import main

raise SystemExit(main())
