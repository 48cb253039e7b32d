"""A sample equal to its condition's source image scores perfectly, and a sample of an unrelated
photograph scores poorly, for canny, hed, depth and pose, through the same re-annotate-and-score
path as cn-eval. The neural annotators run on seeded weights (tests.parity): their maps are not
meaningful, but they are deterministic functions of the image, which is all this measure needs."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

import annotators
from controlnet.evaluation.measures import ScoreOptions, Target, measure_for, score_samples


def jpeg(image: np.ndarray, quality: int = 85) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


@pytest.fixture(scope="module")
def pictures(photos: list[np.ndarray]) -> list[np.ndarray]:
    """Astronaut and coffee, 64 x 64: neither is in the other."""
    return [cv2.resize(p, (64, 64), interpolation=cv2.INTER_AREA) for p in photos[:2]]


def scores(annotator: annotators.Annotator, pictures: list[np.ndarray], samples: list[np.ndarray]) -> list[dict[str, float]]:
    """Scores of each sample against the condition of the first picture."""
    (found,) = annotator.annotate(pictures[:1], single_channel=True)
    target = Target(found.map, found.data)
    results = score_samples(annotator, measure_for(type(annotator)), [target] * len(samples), samples, ScoreOptions())
    return [r.scores for r in results]


def test_canny(pictures: list[np.ndarray]) -> None:
    same, near, other = scores(annotators.create("canny"), pictures, [pictures[0], jpeg(pictures[0]), pictures[1]])
    assert same["f1"] == 1.0
    assert other["f1"] < 0.3
    assert near["f1"] > 0.5 > other["f1"]  # a lightly compressed copy still follows


def test_hed(seeded_weights, pictures: list[np.ndarray]) -> None:
    same, near, other = scores(seeded_weights.create("hed"), pictures, [pictures[0], jpeg(pictures[0]), pictures[1]])
    assert same["ssim"] == pytest.approx(1.0) and same["ms_ssim"] == pytest.approx(1.0) and same["psnr"] == 100.0
    assert other["ssim"] < 0.4 and other["psnr"] < 10
    assert near["ssim"] > 0.6 > other["ssim"]


def test_depth(seeded_weights, pictures: list[np.ndarray]) -> None:
    # Random depth weights are chaotic (a JPEG copy moves them as much as another photograph), so
    # only the exact copy and the unrelated photograph are compared.
    same, other = scores(seeded_weights.create("depth_midas"), pictures, [pictures[0], pictures[1]])
    assert same["rmse"] == 0.0
    assert other["rmse"] > 20


def test_pose(seeded_weights, pictures: list[np.ndarray]) -> None:
    annotator = seeded_weights.create("openpose")
    same, other = scores(annotator, pictures, [pictures[0], pictures[1]])
    (found,) = annotator.annotate(pictures[:1])
    assert found.data["people"], "the seeded network finds keypoints, so the scores below compare something"
    assert same == {"pck": 1.0, "oks": 1.0}
    assert other["pck"] < 0.5 and other["oks"] < 0.5
