"""The label sets as data (``annotators.labels``), the ``segmentation`` data kind's codec and card,
and the reference drawing of label maps (``annotators.seg_render``)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from annotators.data import SegmentationKind
from annotators.labels import ADE20K, ADE20K_CLASSES, ADE20K_PALETTE, COCO_PANOPTIC, COCO_PANOPTIC_CLASSES, COCO_PANOPTIC_PALETTE
from annotators.seg_render import draw_sem_seg, edge_width, flat
from tests.parity import case


def test_label_sets_have_the_reference_sizes_order_and_palettes() -> None:
    assert len(ADE20K_CLASSES) == len(ADE20K_PALETTE) == 150
    assert len(COCO_PANOPTIC_CLASSES) == len(COCO_PANOPTIC_PALETTE) == 133
    assert ADE20K_CLASSES[:3] == ("wall", "building", "sky") and ADE20K_CLASSES[37] == "bathtub" and ADE20K_CLASSES[-1] == "flag"
    assert COCO_PANOPTIC_CLASSES[0] == "person" and COCO_PANOPTIC_CLASSES[79] == "toothbrush" and COCO_PANOPTIC_CLASSES[80] == "banner"
    assert COCO_PANOPTIC_CLASSES[-1] == "rug-merged"
    np.testing.assert_array_equal(np.asarray(ADE20K_PALETTE, np.uint8), case("uniformer_ade20k").golden["palette"])
    np.testing.assert_array_equal(np.asarray(ADE20K_PALETTE, np.uint8), case("oneformer_ade20k").golden["palette"])
    np.testing.assert_array_equal(np.asarray(COCO_PANOPTIC_PALETTE, np.uint8), case("oneformer_coco").golden["palette"])
    assert (ADE20K.classes, ADE20K.palette) == (ADE20K_CLASSES, ADE20K_PALETTE)
    assert (COCO_PANOPTIC.classes, COCO_PANOPTIC.palette) == (COCO_PANOPTIC_CLASSES, COCO_PANOPTIC_PALETTE)


def test_label_maps_round_trip_losslessly_in_8_and_16_bits() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 150, (37, 53)).astype(np.uint8)
    encoded = ADE20K.encode(labels)
    assert encoded[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = ADE20K.decode({"bytes": encoded, "path": None})
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, labels)
    many = SegmentationKind("many", tuple(f"c{i}" for i in range(300)), tuple((i % 256, 0, 0) for i in range(300)))
    wide = rng.integers(0, 300, (9, 11))
    decoded = many.decode(many.encode(wide))
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, wide)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((4, 4, 3), np.uint8), np.full((4, 4), 150, np.int64), np.full((4, 4), -1, np.int64), np.zeros((4, 4), np.float32)],
    ids=["colour image", "label too large", "negative label", "float labels"],
)
def test_bad_label_maps_are_refused_with_the_range(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"labels in \[0, 150\)"):
        ADE20K.encode(bad)


def test_a_kind_needs_a_colour_and_a_distinct_name_per_class() -> None:
    with pytest.raises(ValueError, match="3 classes but 2 palette colours"):
        SegmentationKind("short", ("a", "b", "c"), ((0, 0, 0), (1, 1, 1)))
    with pytest.raises(ValueError, match="class names repeat"):
        SegmentationKind("twice", ("a", "a"), ((0, 0, 0), (1, 1, 1)))


def test_tally_and_card_give_images_and_pixel_shares() -> None:
    first = np.array([[0, 0, 7, 7]], np.uint8)  # wall 2 px, bed 2 px
    second = np.array([[7, 7, 7, 149]], np.uint8)  # bed 3 px, flag 1 px
    totals = ADE20K.tally(first) + ADE20K.tally(second)
    assert totals == Counter({"images:wall": 1, "pixels:wall": 2, "images:bed": 2, "pixels:bed": 5, "images:flag": 1, "pixels:flag": 1})
    lines = ADE20K.card_lines(totals, rows=2)
    assert "ADE20K, 150 classes, 3 of them found" in lines[0]
    assert "  | 0 | wall | 120,120,120 | 1 | 25.00% |" in lines
    assert "  | 7 | bed | 204,5,255 | 2 | 62.50% |" in lines
    assert "  | 149 | flag | 92,0,255 | 1 | 12.50% |" in lines
    assert "  | 1 | building | 180,120,120 | 0 | 0.00% |" in lines
    assert len(lines) == 4 + 150


def test_drawing_is_the_palette_inside_regions_with_white_edges() -> None:
    labels = np.zeros((40, 60), np.uint8)
    labels[10:30, 15:45] = 12  # a person-coloured rectangle on "wall"
    drawn = draw_sem_seg(labels, ADE20K_PALETTE)
    plain = flat(labels, ADE20K_PALETTE)
    assert drawn.shape == (40, 60, 3) and drawn.dtype == np.uint8
    np.testing.assert_array_equal(drawn[15:25, 20:40], plain[15:25, 20:40])  # well inside the rectangle
    border = ~(drawn == plain).all(axis=-1)
    assert border[10, 20:40].all() and border[29, 20:40].all()  # its edge rows are lightened
    assert (drawn[border] >= plain[border]).all()
    assert (drawn[10, 25] == 255).all()  # a fully covered edge pixel is white


def test_regions_with_holes_are_drawn_as_images_without_edges() -> None:
    labels = np.zeros((40, 40), np.uint8)
    labels[3:37, 3:37] = 3  # a floor square (drawn first, the larger) with a hole ...
    labels[15:25, 15:25] = 0  # ... of wall, which is also the frame around it: a mask with a hole too
    drawn = draw_sem_seg(labels, ADE20K_PALETTE).astype(int)
    # no edges anywhere; matplotlib's float RGBA image rounds some colour values by one level
    assert np.abs(drawn - flat(labels, ADE20K_PALETTE)).max() <= 1


def test_edge_width_grows_with_the_image_as_the_reference() -> None:
    assert edge_width(512, 512) == 1 and edge_width(1500, 1500) == 1 and edge_width(2700, 2700) == 2
