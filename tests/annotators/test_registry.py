"""Contract tests run on every registered annotator, so a new annotator is covered automatically."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

import annotators
from annotators.base import AnnotatorConfig

NAMES = annotators.names()


def _create(name: str, seeded_weights, **params) -> annotators.Annotator:
    cls = annotators.get_class(name)
    if cls.needs_weights:
        params.setdefault("weights", str(seeded_weights.ensure(cls.checkpoints)))  # type: ignore[attr-defined]
    return cls(**params)


@pytest.fixture(scope="module")
def small_images() -> list[np.ndarray]:
    """Crops of real photographs, non-square and of two sizes."""
    from skimage import data

    astronaut, coffee = data.astronaut(), data.coffee()
    return [astronaut[100:164, 200:296].copy(), coffee[50:130, 100:180].copy(), astronaut[300:364, 150:246].copy()]


def test_registry_lists_every_builtin_with_description() -> None:
    infos = annotators.available()
    assert [i.name for i in infos] == NAMES
    for info in infos:
        assert info.description and "\n" not in info.description
        assert isinstance(info.needs_weights, bool)
        assert annotators.get_class(info.name).name == info.name


def test_unknown_annotator_names_the_available_ones() -> None:
    with pytest.raises(annotators.UnknownAnnotatorError) as err:
        annotators.create("cany")
    message = str(err.value)
    assert "'canny'" in message and "Available:" in message and "hough" in message


@pytest.mark.parametrize("name", NAMES)
def test_maps_are_uint8_hwc3_of_input_size(name: str, small_images, seeded_weights) -> None:
    annotator = _create(name, seeded_weights)
    maps = annotator(small_images)
    assert len(maps) == len(small_images)
    for image, condition in zip(small_images, maps):
        assert condition.dtype == np.uint8
        assert condition.shape == image.shape
    if annotator.grayscale:
        for condition in maps:
            np.testing.assert_array_equal(condition[:, :, 0], condition[:, :, 2])


@pytest.mark.parametrize("name", NAMES)
def test_batch_equals_one_by_one_and_is_deterministic(name: str, small_images, seeded_weights) -> None:
    annotator = _create(name, seeded_weights)
    batched = annotator(small_images)
    again = _create(name, seeded_weights)(list(reversed(small_images)))[::-1]
    singles = [annotator([image])[0] for image in small_images]
    for b, a, s in zip(batched, again, singles):
        np.testing.assert_array_equal(b, a)
        np.testing.assert_array_equal(b, s)


@pytest.mark.parametrize("name", NAMES)
def test_inputs_are_not_modified(name: str, small_images, seeded_weights) -> None:
    copies = [image.copy() for image in small_images]
    _create(name, seeded_weights)(small_images)
    for image, copy in zip(small_images, copies):
        np.testing.assert_array_equal(image, copy)


def _invalid_values(field: dataclasses.Field) -> list[object]:
    meta = field.metadata
    if meta.get("choices"):
        return ["not-a-choice"]
    values: list[object] = []
    for bound, step in (("ge", -1), ("gt", 0), ("le", 1), ("lt", 0)):
        limit = meta.get(bound)
        if limit is not None and math.isfinite(limit):
            beyond = limit + step if step else limit
            values.append(type(field.default)(beyond) if isinstance(field.default, (int, float)) else beyond)
    return values


def _ranged_fields(name: str) -> list[tuple[str, str, object]]:
    config_cls = annotators.get_class(name).Config
    return [
        (name, field.name, value)
        for field in dataclasses.fields(config_cls)
        if "help" in field.metadata
        for value in _invalid_values(field)
    ]


@pytest.mark.parametrize(("name", "param", "value"), [row for n in NAMES for row in _ranged_fields(n)])
def test_out_of_range_parameter_is_rejected_with_its_name(name: str, param: str, value: object) -> None:
    with pytest.raises(ValueError, match=param):
        annotators.create(name, **{param: value})


@pytest.mark.parametrize("name", NAMES)
def test_unknown_parameter_and_wrong_type_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="no_such_parameter"):
        annotators.create(name, no_such_parameter=1)
    for field in dataclasses.fields(annotators.get_class(name).Config):
        if "help" in field.metadata and field.default is not None:
            with pytest.raises(ValueError, match=field.name):
                annotators.create(name, **{field.name: object()})


@pytest.mark.parametrize("name", NAMES)
def test_config_is_frozen_with_valid_reference_defaults(name: str) -> None:
    annotator = annotators.create(name)
    assert isinstance(annotator.config, AnnotatorConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        annotator.config.__setattr__("_probe", 1)
    rows = annotator.config.describe()
    assert all(help_text for _, _, help_text in rows)


def test_rejects_bad_images() -> None:
    canny = annotators.create("canny")
    with pytest.raises(ValueError, match="image 0"):
        canny([np.zeros((8, 8), np.uint8)])
    with pytest.raises(ValueError, match="image 1"):
        canny([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(ValueError, match="list of images"):
        canny(np.zeros((8, 8, 3), np.uint8))
    assert canny([]) == []
