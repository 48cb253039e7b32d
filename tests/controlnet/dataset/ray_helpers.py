"""An annotator for the Ray engine tests. It runs in Ray's workers and actors, which import it by
its module path, so it lives here rather than in the test module."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from annotators.base import AnnotatorConfig, PerImageAnnotator, param

#: images this wide wait for the ``gate`` file
GATED_WIDTH = 72
#: images this wide kill the process that annotates them, once
FATAL_WIDTH = 80


@dataclass(frozen=True)
class ProbeConfig(AnnotatorConfig):
    gate: str = param("", f"images {GATED_WIDTH} pixels wide wait until this file exists", runtime=True)
    die_once: str = param("", f"the first process to annotate an image {FATAL_WIDTH} pixels wide creates this file and kills itself", runtime=True)


class Probe(PerImageAnnotator):
    """The gray image (a map that depends on the pixels), with ways to stall or die on purpose."""

    name = "ray_probe"
    description = "test annotator: gray image; can wait for a file or kill its process once"
    Config = ProbeConfig
    grayscale = True

    def _map(self, image: np.ndarray) -> np.ndarray:
        width = image.shape[1]
        if self.config.gate and width == GATED_WIDTH:
            while not Path(self.config.gate).exists():
                time.sleep(0.05)
        if self.config.die_once and width == FATAL_WIDTH:
            try:
                os.close(os.open(self.config.die_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass  # died once already: this is Ray's retry
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


class Broken(PerImageAnnotator):
    """An annotator whose backend cannot load (as with corrupt weights)."""

    name = "ray_broken"
    description = "test annotator: its backend never loads"
    Config = AnnotatorConfig

    def load(self) -> Broken:
        raise RuntimeError("the weights are corrupt")

    def _map(self, image: np.ndarray) -> np.ndarray:
        raise AssertionError("never loaded, never called")


class OnCuda(Probe):
    """The probe, claiming a GPU through the contract's ``device`` (it never computes there)."""

    name = "ray_on_cuda"

    @property
    def device(self) -> str:
        return "cuda:1"
