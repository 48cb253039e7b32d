"""Contract tests run on every registered annotator, so a new annotator is covered automatically."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

import annotators
from annotators.base import AnnotatorConfig

NAMES = annotators.names()

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


def test_info_of_one_annotator_is_its_entry_in_the_listing_and_imports_no_other() -> None:
    import subprocess
    import sys

    listed = {i.name: i for i in annotators.available()}
    for name in NAMES:
        assert annotators.info(name) == listed[name]
    # In a fresh interpreter: the card asks for its annotators' info, and must not import them all.
    code = "import sys, annotators; annotators.info('canny'); print(sorted(m for m in sys.modules if m.startswith('annotators.')))"
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "annotators.canny" in imported and "annotators.hed" not in imported and "annotators.dwpose" not in imported


def test_unknown_annotator_names_the_available_ones() -> None:
    with pytest.raises(annotators.UnknownAnnotatorError) as err:
        annotators.create("cany")
    message = str(err.value)
    assert "'canny'" in message and "Available:" in message and "hough" in message


@pytest.fixture(scope="module")
def runs(small_images, seeded_weights):
    """Per annotator, computed once: maps of the batch, of the reversed batch by a fresh instance, and
    of each image alone, plus whether the inputs were left untouched."""
    cache: dict[str, dict[str, object]] = {}

    def run(name: str) -> dict[str, object]:
        if name not in cache:
            copies = [image.copy() for image in small_images]
            annotator = seeded_weights.create(name)
            batched = annotator(small_images)
            cache[name] = {
                "annotator": annotator,
                "batched": batched,
                "single_channel": [a.map for a in annotator.annotate(small_images, single_channel=True)],
                "reversed": seeded_weights.create(name)(list(reversed(small_images)))[::-1],
                "singles": [annotator([image])[0] for image in small_images],
                "inputs_untouched": all(np.array_equal(a, b) for a, b in zip(small_images, copies)),
            }
        return cache[name]

    return run


@pytest.mark.parametrize("name", NAMES)
def test_maps_are_uint8_hwc3_of_input_size(name: str, small_images, runs) -> None:
    result = runs(name)
    maps = result["batched"]
    assert len(maps) == len(small_images)
    for image, condition in zip(small_images, maps):
        assert condition.dtype == np.uint8
        assert condition.shape == image.shape
    if result["annotator"].grayscale:
        for condition in maps:
            np.testing.assert_array_equal(condition[:, :, 0], condition[:, :, 2])
            np.testing.assert_array_equal(condition[:, :, 0], condition[:, :, 1])


@pytest.mark.parametrize("name", NAMES)
def test_single_channel_maps_are_the_first_channel_of_grayscale_maps(name: str, runs) -> None:
    result = runs(name)
    for wide, compact in zip(result["batched"], result["single_channel"]):
        if result["annotator"].grayscale:
            assert compact.shape == wide.shape[:2]
            np.testing.assert_array_equal(compact, wide[:, :, 0])
        else:  # colour maps are returned as they are
            np.testing.assert_array_equal(compact, wide)


@pytest.mark.parametrize("name", NAMES)
def test_batch_equals_one_by_one_and_is_deterministic(name: str, runs) -> None:
    result = runs(name)
    for batched, again, single in zip(result["batched"], result["reversed"], result["singles"]):
        np.testing.assert_array_equal(batched, again)
        np.testing.assert_array_equal(batched, single)


@pytest.mark.parametrize("name", NAMES)
def test_inputs_are_not_modified(name: str, runs) -> None:
    assert runs(name)["inputs_untouched"]


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
