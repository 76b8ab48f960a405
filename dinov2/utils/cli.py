"""The common ending of every command-line program: exit statuses, input errors as one line, stop signals."""

import argparse
import logging
import sys
from collections.abc import Callable
from typing import NoReturn

from dinov2.errors import UserError
from dinov2.logging import FILE_ONLY
from dinov2.utils.signals import Stopped

__all__ = ["run_cli", "USER_ERROR_STATUS"]

logger = logging.getLogger("dinov2")

USER_ERROR_STATUS = 2  # as argparse exits on a bad flag


def run_cli(
    main: Callable[[argparse.Namespace], object], parser: argparse.ArgumentParser, argv: list[str] | None = None
) -> NoReturn:
    """Parses the command line, runs ``main`` and exits with its status (0 unless ``main`` returns an int).

    A :class:`UserError` (a config value, dataset, path or weights file to fix) exits with status 2 and one message
    on stderr, its traceback written to the run's log file only (``--debug`` raises it instead). A stop signal
    that ended the run after saving what it needs to resume exits with 0, so that the job can be requeued.
    """
    parser.add_argument("--debug", action="store_true", help="raise input errors with their full traceback")
    args = parser.parse_args(argv)
    try:
        status = main(args)
    except Stopped:
        status = 0
    except UserError as error:
        if args.debug:
            raise
        if logger.handlers:  # logging was set up: the traceback goes to the log file
            logger.error("input error", exc_info=True, extra=FILE_ONLY)
        print(f"error: {error}", file=sys.stderr)
        status = USER_ERROR_STATUS
    sys.exit(status if isinstance(status, int) else 0)
