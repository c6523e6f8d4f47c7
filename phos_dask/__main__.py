"""`python -m phos_dask`: the command line (see phos_dask.cli)."""

import os
import sys

if __name__ == "__main__":
    # This process is the program, not a caller's: lift OpenCV's own decode limit (2**30 px, read once when
    # cv2 is loaded) so that `--max-pixels` is the limit that applies.
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 40))
    # NumPy's transparent huge pages off unless asked for, here and in the processes this one starts
    # (phos_dask.localworkers.HUGEPAGE_ENV says why). NumPy read the variable as the package imported it.
    os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
    # OpenBLAS on one thread in the processes this one starts (the kernel warm-up's; local workers have
    # OMP_NUM_THREADS=1), unless asked otherwise. (This process loaded NumPy with the package already.) The
    # package's one BLAS call is small (the bloom tail's least-squares fit, psf.py), yet it woke a pool thread
    # that then spun for about 0.1 s (0.07 s more as NumPy loaded) on a core the compiles wanted.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import numpy._core.multiarray

    _huge_pages = getattr(numpy._core.multiarray, "_set_madvise_hugepage", None)  # NumPy's switch (private)
    if _huge_pages is not None:
        _huge_pages(os.environ["NUMPY_MADVISE_HUGEPAGE"] != "0")
    if sys.argv[1:2] == ["preview"]:
        import gc

        # One image, start to finish: without the garbage collector's passes over the objects the imports
        # and numba's kernel loads make, the command took 0.12-0.15 s less (median and best of 10). Arrays
        # are freed by their reference counts either way; the few cycles a preview makes wait for the exit.
        gc.disable()

from phos_dask.cli import main  # after the environment OpenCV reads as it loads


def leave(code: int) -> None:
    """Exit with `code` once the command is over, without the interpreter's teardown when this process is
    the command and nothing is left running: after a render, freeing every module and numba's and LLVM's
    state takes about 0.3 s. The exit handlers (atexit, weakref finalizers) still run and the standard
    streams are flushed. The exit is the ordinary SystemExit when the module runs inside another program
    (runpy from a script, a profiler, a tracer: they have work to do after it) or a thread is still at work
    (not a daemon: the ordinary exit waits for it)."""
    import atexit
    import threading

    storage = sys.modules.get("phos_dask.storage")
    if storage is not None:
        storage.close_pool()
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    program = bool(sys.argv) and os.path.abspath(sys.argv[0]) == os.path.abspath(__file__)
    if others or run_exit_handlers is None or not program or sys.gettrace() or sys.getprofile():
        raise SystemExit(code)
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can reach it
            code = code or 1
    os._exit(code)


if __name__ == "__main__":  # worker processes spawned by a local cluster import this module too
    leave(main())
