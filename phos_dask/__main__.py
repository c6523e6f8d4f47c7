"""`python -m phos_dask`: the command line (see phos_dask.cli)."""

import os

if __name__ == "__main__":
    # This process is the program, not a caller's: lift OpenCV's own decode limit (2**30 px, read once when
    # cv2 is loaded) so that `--max-pixels` is the limit that applies.
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 40))

from phos_dask.cli import main  # after the environment OpenCV reads as it loads

if __name__ == "__main__":  # worker processes spawned by a local cluster import this module too
    raise SystemExit(main())
