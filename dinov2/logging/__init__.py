"""Logging setup: console on the main process only, one log file per rank; ``print`` is never patched."""

import logging
import sys
from pathlib import Path

from dinov2 import distributed

from .helpers import FILE_ONLY, MetricLogger, SmoothedValue

__all__ = ["FILE_ONLY", "MetricLogger", "SmoothedValue", "setup_logging"]


class _ConsoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


_FORMAT = "%(levelname).1s%(asctime)s %(process)s %(name)s %(filename)s:%(lineno)s] %(message)s"
_DATE_FORMAT = "%Y%m%d %H:%M:%S"
_HANDLER_TAG = "_dinov2_handler_key"  # marks handlers we added, so a second setup_logging call adds none


def _log_file_for_rank(output: str | Path, rank: int) -> Path:
    """``<output>/logs/log.txt`` (``.rank<r>`` appended on other ranks); ``output`` ending in .txt/.log is the file."""
    output = Path(output)
    path = output if output.suffix in (".txt", ".log") else output / "logs" / "log.txt"
    return path if rank == 0 else path.with_name(f"{path.name}.rank{rank}")


def _add_handler(logger: logging.Logger, key: str, handler: logging.Handler, level: int) -> None:
    """Adds ``handler`` under ``key`` ("console" or "file:<path>") unless that key is there already. A file handler
    replaces one for another path, so a second run in the same process does not keep writing the first one's log."""
    if any(getattr(existing, _HANDLER_TAG, None) == key for existing in logger.handlers):
        handler.close()
        return
    kind = key.split(":", 1)[0]
    for stale in [h for h in logger.handlers if str(getattr(h, _HANDLER_TAG, "")).split(":", 1)[0] == kind]:
        logger.removeHandler(stale)
        stale.close()
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt=_DATE_FORMAT))
    setattr(handler, _HANDLER_TAG, key)
    logger.addHandler(handler)


def setup_logging(
    output: str | Path | None = None,
    *,
    name: str = "dinov2",
    level: int = logging.INFO,
    capture_warnings: bool = True,
) -> logging.Logger:
    """Configures logger ``name``: stdout on the main process, plus a file per rank under ``output`` (if given).

    Call it after ``dinov2.distributed.enable()`` so the rank is known. Calling it again (same or new ``output``)
    adds no duplicate handlers, which keeps notebooks and repeated ``main()`` calls readable.
    """
    logger = logging.getLogger(name)
    targets = [logger]
    if capture_warnings:
        logging.captureWarnings(True)
        targets.append(logging.getLogger("py.warnings"))
    rank = distributed.get_global_rank()
    path = None
    if output is not None:
        path = _log_file_for_rank(output, rank)
        path.parent.mkdir(parents=True, exist_ok=True)
    for target in targets:
        target.setLevel(level)
        target.propagate = False
        if rank == 0:
            console = logging.StreamHandler(sys.stdout)
            console.addFilter(_ConsoleFilter())
            _add_handler(target, "console", console, level)
        if path is not None:
            _add_handler(target, f"file:{path.resolve()}", logging.FileHandler(path, mode="a"), level)
    return logger
