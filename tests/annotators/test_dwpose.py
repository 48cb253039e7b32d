"""DWPose (``dw_openpose_full``, ``dw_openpose``) against ``shared/parity/dwpose``, stage by stage, on the
case's stand-in ONNX graphs loaded the way users load the real ones (a ``weights=`` folder); plus the
pipeline's edge cases and a dataset built with it."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import annotators
from annotators import dwpose
from annotators.data import PoseFilters, count_body_keypoints
from annotators.weights import WeightsNotFoundError
from tests.parity import assert_maps_agree, assert_raw_close, case

DW = case("dwpose")
GOLDEN = DW.golden
FILES = ("yolox_l.onnx", "dw-ll_ucoco_384.onnx")


@pytest.fixture(scope="module")
def folder(seeded_weights) -> Path:
    """A weights folder holding the case's stand-in graphs under the published names."""
    return seeded_weights.ensure(FILES)


@pytest.fixture(scope="module")
def full(folder: Path) -> dwpose.DWOpenPoseFull:
    return annotators.create("dw_openpose_full", weights=str(folder)).load()


def test_padding_is_the_identity_here_and_repeats_edges_otherwise() -> None:
    assert dwpose.pad_to_64(DW.input_rgb) is DW.input_rgb  # 512x512: sd-webui adds nothing either
    image = np.arange(70 * 100 * 3, dtype=np.uint8).reshape(70, 100, 3)
    padded = dwpose.pad_to_64(image)
    assert padded.shape == (128, 128, 3)
    np.testing.assert_array_equal(padded[:70, :100], image)
    np.testing.assert_array_equal(padded[70:, :100], np.broadcast_to(image[-1:], (58, 100, 3)))
    np.testing.assert_array_equal(padded[:, 100:], np.broadcast_to(padded[:, 99:100], (128, 28, 3)))


def test_detector_input_is_exact() -> None:
    blob, ratio = dwpose.detector_input(DW.input_rgb)
    assert ratio == 1.25 and blob.dtype == np.float32
    np.testing.assert_array_equal(blob[None], GOLDEN["det_input_u8exact"].astype(np.float32))


def test_letterbox_of_a_wide_image_pads_with_grey_below() -> None:
    image = np.full((300, 600, 3), 7, np.uint8)
    blob, ratio = dwpose.detector_input(image)
    assert ratio == pytest.approx(640 / 600)
    assert (blob[:, :320] == 7).all() and (blob[:, 320:] == 114).all()


def test_raw_detector_output(full: dwpose.DWOpenPoseFull) -> None:
    detector = full._loaded()[0]
    (raw,) = full._run(detector, GOLDEN["det_input_u8exact"].astype(np.float32))
    assert_raw_close(raw, GOLDEN["raw_det_output"], "raw_det_output")


def test_decode_and_nms_give_the_reference_detections_exactly() -> None:
    boxes, scores = dwpose.decode_detections(GOLDEN["raw_det_output"][0], 1.25)
    assert boxes.dtype == scores.dtype == np.float32
    detections = dwpose.multiclass_nms(boxes, scores)
    np.testing.assert_array_equal(detections, GOLDEN["det_nms_dets"])
    np.testing.assert_array_equal(dwpose.person_boxes(detections, 0.3), GOLDEN["det_final_boxes"])


def test_nms_counts_end_pixels_and_suppresses_above_the_threshold() -> None:
    boxes = np.array([[0, 0, 9, 9], [5, 0, 14, 9], [1, 0, 10, 9], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    # With "+1" areas: box 1 overlaps box 0 by 5x10 of 100 each (IoU 1/3, kept); box 2 by 9x10 (0.82, gone).
    assert dwpose.nms(boxes, scores, 0.45) == [0, 1, 3]
    assert dwpose.nms(boxes, scores, 0.3) == [0, 3]
    per_class = np.zeros((4, 3), np.float32)
    per_class[:, 2] = scores
    per_class[3] = (0.05, 0.0, 0.0)  # under the 0.1 score floor everywhere
    rows = dwpose.multiclass_nms(boxes, per_class)
    assert rows[:, 5].tolist() == [2.0, 2.0] and rows[:, 4].tolist() == pytest.approx([0.9, 0.8])
    assert dwpose.multiclass_nms(boxes, np.zeros((4, 3), np.float32)).shape == (0, 6)


def test_crops_are_exact() -> None:
    for index, box in enumerate(GOLDEN["det_final_boxes"]):
        crop, warp, center, scale = dwpose.crop_person(DW.input_rgb, box)
        np.testing.assert_array_equal(center, GOLDEN["pose_bbox_center"][index])
        np.testing.assert_array_equal(scale, GOLDEN["pose_bbox_scale"][index])
        np.testing.assert_array_equal(warp, GOLDEN["pose_warp_mat"][index])
        np.testing.assert_array_equal(crop, GOLDEN["pose_crops_u8"][index])


def test_box_scale_keeps_three_to_four() -> None:
    for box in ([0, 0, 300, 100], [0, 0, 30, 400]):
        center, scale = dwpose.box_center_scale(np.array(box, float))
        assert scale[0] / scale[1] == pytest.approx(0.75)
        assert scale[0] >= 1.25 * box[2] and scale[1] >= 1.25 * box[3]
        assert center.tolist() == [box[2] / 2, box[3] / 2]


def test_raw_simcc_through_the_annotator(full: dwpose.DWOpenPoseFull) -> None:
    simcc_x, simcc_y = full.simcc(list(GOLDEN["pose_crops_u8"]))
    assert_raw_close(simcc_x, GOLDEN["raw_simcc_x"], "raw_simcc_x")
    assert_raw_close(simcc_y, GOLDEN["raw_simcc_y"], "raw_simcc_y")


def test_simcc_decoding_is_exact() -> None:
    locations, scores = dwpose.decode_simcc(GOLDEN["raw_simcc_x"], GOLDEN["raw_simcc_y"])
    np.testing.assert_array_equal(locations, GOLDEN["decode_locs"])
    np.testing.assert_array_equal(scores, GOLDEN["decode_scores"])
    assert (locations == -0.5).any()  # the planted r_ear: no positive bin, so location -1 / 2


def test_keypoints_in_image_pixels() -> None:
    for index in range(len(GOLDEN["decode_locs"])):
        keypoints = dwpose.to_image_coordinates(GOLDEN["decode_locs"][index], GOLDEN["pose_bbox_center"][index], GOLDEN["pose_bbox_scale"][index])
        np.testing.assert_allclose(keypoints, GOLDEN["keypoints_xy"][index], rtol=0, atol=1e-6)


def test_neck_insertion_and_openpose_order() -> None:
    ordered = dwpose.to_openpose_order(GOLDEN["keypoints_xy"], GOLDEN["keypoints_scores"], 0.3)
    np.testing.assert_allclose(ordered, GOLDEN["keypoints_info_openpose"], rtol=0, atol=1e-6)


def test_neck_needs_both_shoulders_strictly_above_the_threshold() -> None:
    keypoints = np.zeros((3, 133, 2))
    keypoints[:, 5], keypoints[:, 6] = (10.0, 20.0), (30.0, 40.0)
    scores = np.zeros((3, 133), np.float32)
    scores[:, 5], scores[:, 6] = (0.9, 0.31, 0.29), (0.5, 0.9, 0.9)
    ordered = dwpose.to_openpose_order(keypoints, scores, 0.3)
    assert ordered[:, 1, 2].tolist() == [1.0, 1.0, 0.0]
    assert ordered[0, 1, :2].tolist() == [20.0, 30.0]
    # COCO's left shoulder (5) becomes OpenPose's 5 and the right (6) OpenPose's 2.
    assert ordered[0, 5, :2].tolist() == [10.0, 20.0] and ordered[0, 2, :2].tolist() == [30.0, 40.0]


def _reference_json() -> dict:
    return json.loads((DW.path / "pose_json.json").read_text())


def _points(values: list[float] | None) -> np.ndarray:
    return np.asarray(values or [], np.float64).reshape(-1, 3)


def test_final_map_and_keypoints_json(full: dwpose.DWOpenPoseFull) -> None:
    (result,) = full.annotate([DW.input_rgb])
    fraction = assert_maps_agree(result.map, GOLDEN["final_map"], name="dw_openpose_full final map")
    assert fraction == 1.0  # identical in every check of the reference too
    reference = _reference_json()
    assert (result.data["canvas_width"], result.data["canvas_height"]) == (reference["canvas_width"], reference["canvas_height"])
    assert len(result.data["people"]) == len(reference["people"]) == 2
    for ours, theirs in zip(result.data["people"], reference["people"]):
        for part in ("pose_keypoints_2d", "face_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d"):
            mine, expected = _points(ours[part]), _points(theirs[part])
            assert mine.shape == expected.shape, part
            np.testing.assert_array_equal(mine[:, 2] > 0, expected[:, 2] > 0, err_msg=part)
            np.testing.assert_allclose(mine[:, :2], expected[:, :2], rtol=0, atol=1e-6, err_msg=part)
            assert ((mine[:, 2] > 0) <= (mine[:, 2] <= 1.0)).all()
    summary = json.loads((DW.path / "info.json").read_text())["people_summary"]
    assert count_body_keypoints(result.data) == sum(p["body_keypoints_present"] for p in summary)


def test_body_only_draws_and_stores_the_body(folder: Path, full: dwpose.DWOpenPoseFull) -> None:
    (whole,) = full.annotate([DW.input_rgb])
    (body,) = annotators.create("dw_openpose", weights=str(folder)).annotate([DW.input_rgb])
    for ours, theirs in zip(body.data["people"], whole.data["people"]):
        assert ours["pose_keypoints_2d"] == theirs["pose_keypoints_2d"]
        assert ours["face_keypoints_2d"] == ours["hand_left_keypoints_2d"] == ours["hand_right_keypoints_2d"] == []
    white = (whole.map == 255).all(axis=2)
    assert white.sum() > 100 and not (body.map == 255).all(axis=2).any()  # face dots only in the full map
    drawn = body.map.any(axis=2)
    assert drawn.sum() > 1000 and (whole.map[drawn] != 0).any(axis=1).all()


def test_feet_are_stored_after_the_body_and_not_drawn(folder: Path, full: dwpose.DWOpenPoseFull) -> None:
    (plain,) = full.annotate([DW.input_rgb])
    (with_feet,) = annotators.create("dw_openpose_full", weights=str(folder), feet=True).annotate([DW.input_rgb])
    np.testing.assert_array_equal(with_feet.map, plain.map)
    for person, expected in zip(with_feet.data["people"], GOLDEN["keypoints_info_openpose"]):
        points = _points(person["pose_keypoints_2d"])
        assert len(points) == 24
        np.testing.assert_allclose(points[18:, :2], expected[18:24, :2] * (expected[18:24, 2:] >= 0.3), atol=1e-6)
        np.testing.assert_array_equal(points[18:, 2] > 0, expected[18:24, 2] >= 0.3)


def test_no_person_but_other_objects_poses_the_whole_image_unless_disabled(folder: Path) -> None:
    """The stand-in detector finds persons at 0.92 and 0.81 and an airplane: above them, the
    reference takes the whole (padded) image as one person's box."""
    strict = annotators.create("dw_openpose_full", weights=str(folder), person_threshold=0.95)
    np.testing.assert_array_equal(strict.detect_people(DW.input_rgb), [[0.0, 0.0, 512.0, 512.0]])
    (result,) = strict.annotate([DW.input_rgb])
    assert len(result.data["people"]) == 1
    alone = annotators.create("dw_openpose_full", weights=str(folder), person_threshold=0.95, whole_image_fallback=False)
    (result,) = alone.annotate([DW.input_rgb])
    assert result.data["people"] == [] and not result.map.any()


class _SilentDetector:
    """A detector session that finds nothing: every score is 0."""

    def get_inputs(self) -> list:
        return [type("Input", (), {"name": "images", "shape": [1, 3, 640, 640]})()]

    def run(self, _outputs: object, _feeds: object) -> list[np.ndarray]:
        return [np.zeros((1, 8400, 85), np.float32)]


def test_nothing_detected_means_no_people(full: dwpose.DWOpenPoseFull, folder: Path) -> None:
    annotator = annotators.create("dw_openpose_full", weights=str(folder)).load()
    annotator._sessions = (_SilentDetector(), annotator._sessions[1])
    assert annotator.detect_people(DW.input_rgb) is None
    (result,) = annotator.annotate([DW.input_rgb])
    assert result.data["people"] == [] and not result.map.any()


def test_odd_sizes_are_padded_and_cropped_back(full: dwpose.DWOpenPoseFull) -> None:
    image = np.ascontiguousarray(DW.input_rgb[:300, :450])
    (result,) = full.annotate([image])
    assert result.map.shape == image.shape
    assert (result.data["canvas_width"], result.data["canvas_height"]) == (450, 300)
    padded = dwpose.pad_to_64(image)
    (on_padded,) = full.annotate([padded])
    np.testing.assert_array_equal(result.map, on_padded.map[:300, :450])  # the same detection, cropped


def test_mixed_batch_equals_one_by_one(full: dwpose.DWOpenPoseFull) -> None:
    images = [DW.input_rgb, np.ascontiguousarray(DW.input_rgb[40:240, 100:400]), np.zeros((64, 80, 3), np.uint8)]
    batched = full.annotate(images)
    for image, result in zip(images, batched):
        (alone,) = full.annotate([image])
        np.testing.assert_array_equal(result.map, alone.map)
        assert result.data == alone.data


def test_accelerator_path_shares_pose_runs_across_images(folder: Path, full: dwpose.DWOpenPoseFull, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA path's grouping, run on the CPU provider: the crops of all images (two people each)
    go through the pose model in runs of ``batch_size``, and each image gets its own people back."""
    annotator = annotators.create("dw_openpose_full", weights=str(folder), device="cuda", batch_size=4)
    monkeypatch.setattr(annotator, "_providers", lambda: ["CPUExecutionProvider"])
    runs: list[tuple[int, ...]] = []

    def recording_run(session, batch: np.ndarray) -> list[np.ndarray]:
        runs.append(batch.shape)
        return dwpose._DWPose._run(session, batch)

    monkeypatch.setattr(annotator, "_run", recording_run)
    images = [DW.input_rgb, np.ascontiguousarray(DW.input_rgb[:, ::-1]), np.ascontiguousarray(DW.input_rgb[40:240, 100:400])]
    batched = annotator.annotate(images)
    assert [shape[0] for shape in runs if len(shape) == 4 and shape[2:] == (384, 288)] == [4, 2]
    assert sum(1 for shape in runs if shape[2:] == (640, 640)) == 3
    for image, result in zip(images, batched):
        (alone,) = full.annotate([image])
        np.testing.assert_array_equal(result.map, alone.map)
        for ours, theirs in zip(result.data["people"], alone.data["people"], strict=True):
            np.testing.assert_allclose(ours["pose_keypoints_2d"], theirs["pose_keypoints_2d"], atol=1e-5)


def test_sessions_are_made_on_load_and_not_pickled(folder: Path) -> None:
    annotator = annotators.create("dw_openpose_full", weights=str(folder))
    assert annotator._sessions is None  # the constructor touches nothing
    annotator.load()
    copy = pickle.loads(pickle.dumps(annotator))
    assert annotator._sessions is not None and copy._sessions is None
    (result,) = copy.annotate([DW.input_rgb])
    np.testing.assert_array_equal(result.map, GOLDEN["final_map"])
    annotator.close()
    assert annotator._sessions is None
    assert annotator.weights_identity() == [{"name": name, "bytes": (folder / name).stat().st_size} for name in FILES]


def test_missing_weights_is_one_line(no_weights: Path, tmp_path: Path) -> None:  # no_weights empties tmp_path's Hub cache
    annotator = annotators.create("dw_openpose_full", weights=str(tmp_path))
    assert not annotator.weights_present(str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as err:
        annotator([DW.input_rgb])
    message = str(err.value)
    assert "\n" not in message and "yolox_l.onnx" in message and "`hf download yzd-v/DWPose yolox_l.onnx`" in message


def test_broken_or_swapped_graphs_are_named(tmp_path: Path, folder: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "yolox_l.onnx").write_bytes(b"not an onnx graph")
    (broken / "dw-ll_ucoco_384.onnx").write_bytes((folder / "dw-ll_ucoco_384.onnx").read_bytes())
    with pytest.raises(ValueError, match=r"^yolox_l\.onnx: cannot load the ONNX graph"):
        annotators.create("dw_openpose", weights=str(broken)).load()
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    (swapped / "yolox_l.onnx").write_bytes((folder / "dw-ll_ucoco_384.onnx").read_bytes())
    (swapped / "dw-ll_ucoco_384.onnx").write_bytes((folder / "yolox_l.onnx").read_bytes())
    with pytest.raises(ValueError, match=r"yolox_l\.onnx: expected an ONNX graph with 1 input and 1 output\(s\), got 1 and 2"):
        annotators.create("dw_openpose", weights=str(swapped)).load()
    with pytest.raises(ValueError, match="must be a folder holding yolox_l.onnx and dw-ll_ucoco_384.onnx, not one file"):
        annotators.create("dw_openpose", weights=str(folder / "yolox_l.onnx")).load()


def test_cuda_without_cuda_onnxruntime_is_one_clear_error(folder: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    annotator = annotators.create("dw_openpose_full", weights=str(folder), device="cuda")
    assert annotator.device == "cuda" and annotator.preferred_batch_size == 8
    with pytest.raises(RuntimeError, match="onnxruntime-gpu") as err:
        annotator.load()
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="device"):
        annotators.create("dw_openpose_full", device="mps")


def test_dataset_has_keypoints_and_min_keypoints_filters(tmp_path: Path, folder: Path) -> None:
    """The stand-in graphs find 16 + 16 body points on a black image and 16 + 17 on a white one."""
    import pyarrow.parquet as pq

    from controlnet.dataset.build import BuildConfig, build, shard_paths

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (128, 96), (0, 0, 0)).save(images / "black.png")
    Image.new("RGB", (128, 96), (255, 255, 255)).save(images / "white.png")
    specs = (("dw_openpose_full", dwpose.DWPoseConfig(weights=str(folder))),)

    def run(output: Path, filters: tuple = ()) -> dict[str, dict]:
        build(BuildConfig(input=str(images), output=output, annotators=specs, workers=1, keep_size=True, filters=filters))
        return {row["file_name"]: row for path in shard_paths(output) for row in pq.read_table(path).to_pylist()}

    rows = run(tmp_path / "all")
    assert set(rows) == {"black.png", "white.png"}
    counts = {name: count_body_keypoints(json.loads(row["keypoints"])) for name, row in rows.items()}
    assert counts == {"black.png": 32, "white.png": 33}
    (expected,) = annotators.create("dw_openpose_full", weights=str(folder)).annotate([np.full((96, 128, 3), 255, np.uint8)])
    assert json.loads(rows["white.png"]["keypoints"]) == json.loads(json.dumps(expected.data))

    kept = run(tmp_path / "some", (PoseFilters(min_keypoints=33),))
    assert set(kept) == {"white.png"}
    (skip,) = [json.loads(line) for line in (tmp_path / "some" / "skipped.jsonl").read_text().splitlines()]
    assert skip["file_name"] == "black.png" and skip["reason"].startswith("32 body keypoints found")
