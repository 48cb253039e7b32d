"""Faults on demand for builder tests: an annotator that hangs or kills its own process when it
sees a magenta image, and a command line that runs ``cn-annotate`` with it registered.

Real processes and real signals: the kill is ``os.kill(os.getpid(), SIGKILL)`` in the worker that
annotates the image, and a hang lasts until the test removes a file (or kills the process).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from annotators.base import param
from annotators.canny import Canny, CannyConfig

NAME = "fault_canny"
MAGENTA = (255, 0, 255)


@dataclass(frozen=True)
class FaultConfig(CannyConfig):
    hang_while: str = param("", "on a magenta image, write the process id to FILE.pid and wait while FILE exists", runtime=True)
    die: str = param("never", "on a magenta image, SIGKILL this process", choices=("never", "first", "always"), runtime=True)
    die_marker: str = param("", "with die=first: the file that records the first death", runtime=True)


class FaultCanny(Canny):
    """Canny, with the faults of its config triggered by magenta images."""

    name = NAME
    description = "test annotator: Canny that hangs or dies on magenta images"
    Config = FaultConfig

    def _map(self, image: np.ndarray) -> np.ndarray:
        if is_magenta(image):
            config = self.config
            if config.hang_while:
                Path(config.hang_while + ".pid").write_text(str(os.getpid()))
                while os.path.exists(config.hang_while):
                    time.sleep(0.02)
            if config.die == "always" or (config.die == "first" and not os.path.exists(config.die_marker)):
                if config.die == "first":
                    Path(config.die_marker).write_text("died once")
                os.kill(os.getpid(), signal.SIGKILL)
        return super()._map(image)


def is_magenta(image: np.ndarray) -> bool:
    means = image.reshape(-1, image.shape[-1]).mean(axis=0) if image.ndim == 3 else None
    return means is not None and means[0] > 250 and means[1] < 5 and means[2] > 250


def write_magenta(path: Path, size: int = 64) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), MAGENTA).save(path)


def command(*args: str) -> list[str]:
    """``cn-annotate ARGS`` in a new Python process, with ``fault_canny`` registered."""
    code = f"import annotators; annotators.register({NAME!r}, 'tests.controlnet.faults:FaultCanny'); from cli.annotate import main; main()"
    return [sys.executable, "-c", code, *args]
