"""Self-supervised pretraining: the meta-architecture and the training entry point."""

from .ssl_meta_arch import SSLMetaArch
from .train import get_args_parser, main

__all__ = ["SSLMetaArch", "get_args_parser", "main"]
