"""Self-supervised pretraining: the meta-architecture and the training entry point.

``get_args_parser`` and ``main`` are loaded on first use, so that ``python -m dinov2.train.train`` does not import
the entry-point module twice (once through this package, once as ``__main__``, which the module runner warns about).
"""

from typing import Any

from .ssl_meta_arch import SSLMetaArch

__all__ = ["SSLMetaArch", "get_args_parser", "main"]


def __getattr__(name: str) -> Any:
    if name in ("get_args_parser", "main"):
        from . import train

        return getattr(train, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
