"""Lazy detection of the optional xFormers kernels (the package's only reader of ``XFORMERS_DISABLED``).

Nothing happens at import (no probe, no warning): xFormers is looked for only when a layer first asks, and the
answer is cached so the import is attempted once per process.
"""

import functools
import importlib.util
import os

__all__ = ["xformers_available"]


@functools.lru_cache(maxsize=1)
def _xformers_importable() -> bool:
    if importlib.util.find_spec("xformers") is None:
        return False
    try:
        import xformers.ops  # noqa: F401
    except Exception:  # a broken or CPU-only xFormers build must not break the model
        return False
    return True


def xformers_available() -> bool:
    """True when ``xformers.ops`` imports and the environment variable ``XFORMERS_DISABLED`` is not set.

    The variable is read on every call so tests and users can switch xFormers off without reimporting anything.
    Callers still check that their tensors are on CUDA: the xFormers kernels have no CPU implementation.
    """
    if os.environ.get("XFORMERS_DISABLED") is not None:
        return False
    return _xformers_importable()
