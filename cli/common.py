"""Helpers shared by the command-line apps: short errors, exit codes, and quiet libraries."""

from __future__ import annotations

import logging
import sys
from typing import NoReturn

from rich.console import Console

#: Errors and warnings go to stderr, so stdout stays clean for piping.
err_console = Console(stderr=True, highlight=False)

EXIT_FAILURE = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print a one-line error and exit."""
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    sys.exit(code)


class _Notices(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        err_console.print(record.getMessage(), soft_wrap=True, markup=False)


def show_notices(logger_name: str) -> None:
    """Print the INFO messages of our logger ``logger_name`` (resumed from, caches reused) on stderr."""
    logger = logging.getLogger(logger_name)
    logger.setLevel(logging.INFO)
    if not any(isinstance(h, _Notices) for h in logger.handlers):
        logger.addHandler(_Notices())


def quiet_libraries() -> None:
    """Silence what libraries print on every run but that tells a user of ours nothing: transformers'
    notice that image processors fall back to PIL without torchvision (we use none), and its
    per-model weight-loading bars. Downloads keep their progress bars. Call before diffusers loads."""
    logging.getLogger("transformers.utils.import_utils").setLevel(logging.ERROR)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
