"""The errors phos_dask raises on purpose, and how any error becomes one line for the user.

Every such error is a `PhosError`: its message is meant for the user as it stands, `exit_code` is what the
command line exits with, and `user_input` says whether the user's own input or flags caused it (as opposed to
the environment: a cluster, a store, a device). Each keeps the built-in base it always had (ValueError,
RuntimeError, OSError), so callers that catch those still do.
"""

from __future__ import annotations

#: Exit statuses of the command line.
EXIT_USAGE = 2
EXIT_FAILED = 1


class PhosError(Exception):
    """Base of phos_dask's own errors (see the module docstring)."""

    exit_code: int = EXIT_USAGE
    user_input: bool = True


class EnvironmentProblem(PhosError):
    """A PhosError caused by the environment (cluster, store, device), not by the user's input."""

    user_input = False


def one_line(error: BaseException | str, limit: int = 300) -> str:
    """An error (or text) as one line for the user: whitespace runs collapsed, at most `limit` characters.
    A PhosError's message stands alone; another exception's type is named when its message does not say
    what it is (a KeyError's message is only the key)."""
    text = " ".join(str(error).split())
    if isinstance(error, BaseException):
        if not text:
            text = type(error).__name__
        elif isinstance(error, LookupError) and not isinstance(error, PhosError):
            text = f"{type(error).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 1] + "…"
