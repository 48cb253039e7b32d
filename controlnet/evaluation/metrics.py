"""Condition-following metrics: pure functions of a condition and the re-annotation of a sample.

Every function takes the condition first (the target) and the sample's re-annotation second, as
uint8 maps or decoded data, and returns plain floats; docs/evaluation.md states each definition and
where it follows or leaves ControlNet++ (Li et al., ECCV 2024). Library implementations are used
where they exist (scikit-image's SSIM, PSNR and MSE, SciPy's distance transform and assignment);
MS-SSIM is built on the same SSIM statistics because scikit-image has no multi-scale variant.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "MS_SSIM_WEIGHTS",
    "OPENPOSE_BODY_SIGMAS",
    "PSNR_CAP",
    "angular_error",
    "bootstrap_interval",
    "edge_f1",
    "mask_iou",
    "mean_iou",
    "ms_ssim",
    "oks",
    "pck",
    "people_from_openpose",
    "psnr",
    "rmse",
    "ssim",
]

#: PSNR of identical maps (infinite) is reported as this, as ControlNet++ does.
PSNR_CAP = 100.0
#: Wang, Simoncelli and Bovik (2003), the five scales' exponents, finest first.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: Gaussian SSIM window of Wang et al. (2004): sigma 1.5, truncated to 11 taps.
_SIGMA, _TRUNCATE = 1.5, 3.5
_WINDOW = 2 * int(_TRUNCATE * _SIGMA + 0.5) + 1
_K1, _K2 = 0.01, 0.03
_RANGE = 255.0
#: COCO keypoint sigmas (Lin et al. 2014, the cocoeval constants) in OpenPose COCO-18 order: nose,
#: neck, right shoulder, elbow, wrist, left shoulder, elbow, wrist, right hip, knee, ankle, left
#: hip, knee, ankle, right eye, left eye, right ear, left ear. COCO has no neck; it takes the
#: shoulders' sigma.
OPENPOSE_BODY_SIGMAS = np.array(
    [0.026, 0.079, 0.079, 0.072, 0.062, 0.079, 0.072, 0.062, 0.107, 0.087, 0.089, 0.107, 0.087, 0.089, 0.025, 0.025, 0.035, 0.035]
)
_PARTS = ("pose_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d", "face_keypoints_2d")


def _gray(image: np.ndarray) -> np.ndarray:
    """An HxW float64 map from an HxW or HxWx3 map whose channels are equal (grayscale maps)."""
    return np.asarray(image[..., 0] if image.ndim == 3 else image, dtype=np.float64)


def _check_shapes(target: np.ndarray, predicted: np.ndarray) -> None:
    if target.shape[:2] != predicted.shape[:2]:
        raise ValueError(f"maps differ in size: {target.shape[:2]} and {predicted.shape[:2]}")


# --- edges and masks ---------------------------------------------------------------------------


def edge_f1(target: np.ndarray, predicted: np.ndarray, tolerance: int = 0) -> dict[str, float]:
    """Precision, recall and F1 of the predicted edge pixels (value > 127) against the target's.

    A predicted edge pixel is correct when a target edge pixel lies within ``tolerance`` pixels
    (Euclidean), and a target edge pixel is found when a predicted one does; with ``tolerance`` 0
    this is the pixel-wise binary F1, ``2TP / (2TP + FP + FN)``. Two maps without edges agree
    perfectly (F1 1); edges on one side only give 0.
    """
    from scipy.ndimage import distance_transform_edt

    _check_shapes(target, predicted)
    wanted, found = _gray(target) > 127, _gray(predicted) > 127
    if tolerance > 0:
        near_wanted = distance_transform_edt(~wanted) <= tolerance if wanted.any() else np.zeros_like(wanted)
        near_found = distance_transform_edt(~found) <= tolerance if found.any() else np.zeros_like(found)
    else:
        near_wanted, near_found = wanted, found
    n_found, n_wanted = int(found.sum()), int(wanted.sum())
    if n_found == 0 and n_wanted == 0:
        return {"f1": 1.0, "precision": 1.0, "recall": 1.0}
    precision = float((found & near_wanted).sum() / n_found) if n_found else 0.0
    recall = float((wanted & near_found).sum() / n_wanted) if n_wanted else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"f1": f1, "precision": precision, "recall": recall}


def mask_iou(target: np.ndarray, predicted: np.ndarray) -> float:
    """Intersection over union of the white (> 127) regions; two empty masks give 1."""
    _check_shapes(target, predicted)
    a, b = _gray(target) > 127, _gray(predicted) > 127
    union = int((a | b).sum())
    return 1.0 if union == 0 else float((a & b).sum() / union)


# --- similarity of soft maps -------------------------------------------------------------------


def _channels(target: np.ndarray, predicted: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-channel float64 pairs: one for gray maps (or colour maps with equal channels), three for colour."""
    _check_shapes(target, predicted)
    if target.ndim == 2 or predicted.ndim == 2:
        return [(_gray(target), _gray(predicted))]
    return [(target[..., c].astype(np.float64), predicted[..., c].astype(np.float64)) for c in range(target.shape[2])]


def _check_window(image: np.ndarray) -> None:
    if min(image.shape[:2]) < _WINDOW:
        raise ValueError(f"SSIM needs maps of at least {_WINDOW}x{_WINDOW} pixels, got {image.shape[1]}x{image.shape[0]}")


def ssim(target: np.ndarray, predicted: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004: Gaussian window sigma 1.5, K1 0.01, K2 0.03, range 255),
    scikit-image's ``structural_similarity``; colour maps average their channels."""
    from skimage.metrics import structural_similarity

    _check_window(target)
    pairs = _channels(target, predicted)
    return float(np.mean([
        structural_similarity(a, b, data_range=_RANGE, gaussian_weights=True, sigma=_SIGMA, use_sample_covariance=False)
        for a, b in pairs
    ]))


def _ssim_and_contrast(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean SSIM and mean contrast-structure term at one scale, with the statistics (and border
    crop) of scikit-image's ``structural_similarity`` under :func:`ssim`'s settings."""
    from scipy.ndimage import gaussian_filter

    def blur(x: np.ndarray) -> np.ndarray:
        return gaussian_filter(x, sigma=_SIGMA, truncate=_TRUNCATE, mode="reflect")

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a * mu_a, blur(b * b) - mu_b * mu_b
    covariance = blur(a * b) - mu_a * mu_b
    c1, c2 = (_K1 * _RANGE) ** 2, (_K2 * _RANGE) ** 2
    contrast = (2 * covariance + c2) / (var_a + var_b + c2)
    luminance = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    pad = (_WINDOW - 1) // 2
    inner = (slice(pad, -pad), slice(pad, -pad))
    return float((luminance * contrast)[inner].mean()), float(contrast[inner].mean())


def _halve(x: np.ndarray) -> np.ndarray:
    """2x2 average pooling (an odd last row or column is dropped)."""
    h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    return x[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


def ms_ssim(target: np.ndarray, predicted: np.ndarray) -> float:
    """Multi-scale SSIM (Wang, Simoncelli and Bovik 2003): the product over scales of the mean
    contrast-structure term, to the power of :data:`MS_SSIM_WEIGHTS`, with the full SSIM at the
    coarsest scale; each scale halves the previous by 2x2 averaging. Negative terms count as 0.
    Maps too small for five scales use as many as fit the 11-pixel window, with the weights of
    those scales renormalised to sum to 1."""
    _check_window(target)
    values = []
    for a, b in _channels(target, predicted):
        scales = 1
        while scales < len(MS_SSIM_WEIGHTS) and min(a.shape) // 2**scales >= _WINDOW:
            scales += 1
        weights = np.asarray(MS_SSIM_WEIGHTS[:scales])
        if scales < len(MS_SSIM_WEIGHTS):  # the published five sum to 1.0001: used as they are
            weights = weights / weights.sum()
        product = 1.0
        for level, weight in enumerate(weights):
            full, contrast = _ssim_and_contrast(a, b)
            term = full if level == scales - 1 else contrast
            product *= max(term, 0.0) ** weight
            a, b = _halve(a), _halve(b)
        values.append(product)
    return float(np.mean(values))


def psnr(target: np.ndarray, predicted: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB for the 0-255 range (scikit-image), :data:`PSNR_CAP` for
    identical maps."""
    from skimage.metrics import mean_squared_error, peak_signal_noise_ratio

    _check_shapes(target, predicted)
    a, b = np.asarray(target, np.float64), np.asarray(predicted, np.float64)
    if mean_squared_error(a, b) == 0:
        return PSNR_CAP
    return min(PSNR_CAP, float(peak_signal_noise_ratio(a, b, data_range=_RANGE)))


def rmse(target: np.ndarray, predicted: np.ndarray) -> float:
    """Root mean squared difference of two gray maps on the 0-255 scale."""
    from skimage.metrics import mean_squared_error

    _check_shapes(target, predicted)
    return float(np.sqrt(mean_squared_error(_gray(target), _gray(predicted))))


# --- normals -----------------------------------------------------------------------------------


def angular_error(target: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Angles in degrees between the unit normals that two normal maps encode (``rgb / 127.5 - 1``,
    then normalised): their mean, median, and the share of pixels within 11.25 degrees. Pixels
    where either vector has no length are left out."""
    _check_shapes(target, predicted)
    a = target.astype(np.float64) / 127.5 - 1.0
    b = predicted.astype(np.float64) / 127.5 - 1.0
    norm_a, norm_b = np.linalg.norm(a, axis=2), np.linalg.norm(b, axis=2)
    valid = (norm_a > 1e-6) & (norm_b > 1e-6)
    if not valid.any():
        raise ValueError("no pixel holds a normal in both maps")
    cosine = (a[valid] * b[valid]).sum(axis=1) / (norm_a[valid] * norm_b[valid])
    angles = np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))
    return {"angular_error": float(angles.mean()), "angular_error_median": float(np.median(angles)), "within_11_25": float((angles <= 11.25).mean())}


# --- segmentation ------------------------------------------------------------------------------


def mean_iou(target: np.ndarray, predicted: np.ndarray, ignore_index: int | None = None) -> dict[str, float]:
    """Mean intersection over union of two label maps over the classes present in either, and the
    pixel accuracy. Pixels labelled ``ignore_index`` in the target are left out of both."""
    _check_shapes(target, predicted)
    t, p = np.asarray(target).ravel(), np.asarray(predicted).ravel()
    if ignore_index is not None:
        keep = t != ignore_index
        t, p = t[keep], p[keep]
    if t.size == 0:
        raise ValueError("every pixel of the target is ignored")
    classes = np.union1d(np.unique(t), np.unique(p))
    ious = [np.count_nonzero((t == c) & (p == c)) / np.count_nonzero((t == c) | (p == c)) for c in classes]
    return {"miou": float(np.mean(ious)), "pixel_accuracy": float(np.mean(t == p))}


# --- pose --------------------------------------------------------------------------------------


def people_from_openpose(data: dict[str, Any] | None, width: int, height: int) -> list[dict[str, np.ndarray]]:
    """The people of an OpenPose JSON dict as ``part -> (N, 3)`` arrays of ``x, y, confidence`` in
    pixels of a ``width`` x ``height`` canvas (coordinates are rescaled from the JSON's own canvas).
    A point with confidence 0 is missing."""
    if not data:
        return []
    scale = np.array([width / float(data.get("canvas_width") or width), height / float(data.get("canvas_height") or height), 1.0])
    people = []
    for person in data.get("people") or []:
        parts = {}
        for part in _PARTS:
            values = person.get(part) or []
            if len(values) % 3:
                raise ValueError(f"{part}: keypoint list length {len(values)} is not a multiple of 3")
            if values:
                parts[part] = np.asarray(values, np.float64).reshape(-1, 3) * scale
        people.append(parts)
    return people


def _padded(points: np.ndarray | None, n: int) -> np.ndarray:
    """``points`` cut or padded with missing points to ``n`` rows."""
    if points is None:
        return np.zeros((n, 3))
    return points[:n] if len(points) >= n else np.vstack([points, np.zeros((n - len(points), 3))])


def _aligned(target: dict[str, np.ndarray], found: dict[str, np.ndarray], parts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The two people's points of ``parts`` stacked in the condition's order and lengths; a part
    that one side lacks is all missing there."""
    rows_a, rows_b = [np.zeros((0, 3))], [np.zeros((0, 3))]
    for part in parts:
        a, b = target.get(part), found.get(part)
        if a is None and b is None:
            continue
        n = len(a) if a is not None else len(b)  # type: ignore[arg-type]
        rows_a.append(_padded(a, n))
        rows_b.append(_padded(b, n))
    return np.vstack(rows_a), np.vstack(rows_b)


def _best_total(scores: np.ndarray) -> float:
    """The largest sum of ``scores[i, j]`` over a one-to-one matching of rows to columns."""
    from scipy.optimize import linear_sum_assignment

    if scores.size == 0:
        return 0.0
    rows, cols = linear_sum_assignment(scores, maximize=True)
    return float(scores[rows, cols].sum())


def _has_points(people: list[dict[str, np.ndarray]], parts: Sequence[str]) -> bool:
    return any((p[part][:, 2] > 0).any() for p in people for part in parts if part in p)


def pck(target: list[dict[str, np.ndarray]], found: list[dict[str, np.ndarray]], alpha: float = 0.1) -> float:
    """Percentage of correct keypoints: a keypoint present in the condition is correct when the
    sample's matched person has it within ``alpha`` times the long side of that condition person's
    keypoint bounding box. Missing keypoints in the sample count as wrong; keypoints missing in the
    condition are not scored. People are matched one to one so as to maximise the correct count.
    A condition without keypoints scores 1 when the sample has none either, else 0."""
    parts = _PARTS
    visible_total = 0
    correct = np.zeros((len(target), len(found)))
    for i, person in enumerate(target):
        points = np.vstack([np.zeros((0, 3)), *(person[p] for p in parts if p in person)])
        visible = points[:, 2] > 0
        visible_total += int(visible.sum())
        if not visible.any():
            continue
        extent = points[visible, :2].max(axis=0) - points[visible, :2].min(axis=0)
        threshold = alpha * float(extent.max())
        for j, other in enumerate(found):
            a, b = _aligned(person, other, parts)
            scored = (a[:, 2] > 0) & (b[:, 2] > 0)
            distance = np.linalg.norm(a[:, :2] - b[:, :2], axis=1)
            correct[i, j] = np.count_nonzero(scored & (distance <= threshold))
    if visible_total == 0:
        return 0.0 if _has_points(found, parts) else 1.0
    return _best_total(correct) / visible_total


def oks(target: list[dict[str, np.ndarray]], found: list[dict[str, np.ndarray]]) -> float:
    """Object keypoint similarity on body keypoints (COCO's definition with the sigmas of
    :data:`OPENPOSE_BODY_SIGMAS`): per condition person, the mean over its present keypoints of
    ``exp(-d^2 / (2 s^2 (2 sigma)^2))``, where ``s^2`` is the area of its keypoint bounding box
    (at least one pixel) and a keypoint missing in the sample contributes 0. People are matched one
    to one to maximise the summed OKS; the image's score is that sum over the condition people with
    body keypoints (an unmatched one scores 0). A condition without body keypoints scores 1 when the
    sample has none either, else 0."""
    body = ("pose_keypoints_2d",)
    people = [p for p in target if body[0] in p and (p[body[0]][:, 2] > 0).any()]
    if not people:
        return 0.0 if _has_points(found, body) else 1.0
    similarity = np.zeros((len(people), len(found)))
    for i, person in enumerate(people):
        points = person[body[0]]
        visible = points[:, 2] > 0
        extent = points[visible, :2].max(axis=0) - points[visible, :2].min(axis=0)
        area = max(float(extent[0] * extent[1]), 1.0)
        # A body of another layout than COCO-18 takes the mean sigma for every point.
        sigmas = OPENPOSE_BODY_SIGMAS if len(points) == len(OPENPOSE_BODY_SIGMAS) else np.full(len(points), OPENPOSE_BODY_SIGMAS.mean())
        for j, other in enumerate(found):
            a, b = _aligned(person, other, body)
            present = b[:, 2] > 0
            squared = ((a[:, :2] - b[:, :2]) ** 2).sum(axis=1)
            per_point = np.where(present, np.exp(-squared / (2 * area * (2 * sigmas) ** 2)), 0.0)
            similarity[i, j] = per_point[visible].mean()
    return _best_total(similarity) / len(people)


# --- aggregation -------------------------------------------------------------------------------


def bootstrap_interval(values: Sequence[float], resamples: int, confidence: float, seed: int) -> tuple[float, float] | None:
    """Percentile bootstrap confidence interval of the mean: ``resamples`` means of samples drawn
    with replacement (NumPy generator seeded with ``seed``). None for fewer than two values or
    no resamples."""
    data = np.asarray(values, np.float64)
    if data.size < 2 or resamples <= 0:
        return None
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)
