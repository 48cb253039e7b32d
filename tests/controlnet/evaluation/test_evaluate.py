"""evaluate() on datasets made by the real builder: pairing by file name, the annotator and its
parameters from build.json, reports, label maps from a segmentation column, the CLIP score, and
the choice of measure through the annotator contract."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import annotators
from annotators.base import MAP_KINDS, Annotation, Annotator, AnnotatorConfig, param
from annotators.data import SegmentationKind
from controlnet.evaluation import EvalConfig, EvalError, evaluate
from controlnet.evaluation.measures import MEASURES, fit_to, measure_for
from controlnet.evaluation.metrics import edge_f1
from controlnet.testing import write_dataset
from tests.controlnet.conftest import CAPTIONS, thumbnails


@pytest.fixture(scope="module")
def images(photos: list[np.ndarray]) -> list[np.ndarray]:
    return thumbnails(photos, 64)


@pytest.fixture(scope="module")
def canny_ds(tmp_path_factory: pytest.TempPathFactory, images: list[np.ndarray]) -> Path:
    """Four rows made by cn-annotate canny at non-default thresholds, so that using build.json matters."""
    from controlnet.dataset.build import BuildConfig, build

    folder = tmp_path_factory.mktemp("canny-ds")
    sources = folder / "images" / "sub"
    sources.mkdir(parents=True)
    for index, (image, caption) in enumerate(zip(images, CAPTIONS)):
        Image.fromarray(image).save(sources / f"photo{index}.png")
        (sources / f"photo{index}.txt").write_text(caption)
    config = annotators.create("canny", low_threshold=30, high_threshold=60).config
    build(BuildConfig(input=str(folder / "images"), output=folder / "ds", annotators=(("canny", config),), keep_size=True, workers=1))
    return folder / "ds"


def write_samples(folder: Path, images: list[np.ndarray], names: list[str]) -> Path:
    for image, name in zip(images, names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / name)
    return folder


def test_samples_equal_to_their_sources_score_perfectly_and_swapped_ones_poorly(canny_ds: Path, images: list[np.ndarray], tmp_path: Path) -> None:
    # By bare stem (unique in the dataset), as JPEG would lose pixels: PNG under another suffix.
    same = write_samples(tmp_path / "same", images, [f"photo{i}.png" for i in range(4)])
    result = evaluate(EvalConfig(samples=same, output=tmp_path / "same.json", dataset=str(canny_ds)))
    report = result.report
    assert report["annotator"] == {"id": "canny", "kind": "edges", "params": {"low_threshold": 30, "high_threshold": 60}, "params_from": "build.json"}
    assert report["counts"] == {"samples": 4, "scored": 4, "skipped": 0}
    assert report["metrics"]["f1"]["mean"] == 1.0 and report["metrics"]["f1"]["ci"] == [1.0, 1.0]
    assert {r["file_name"] for r in report["per_sample"]} == {f"sub/photo{i}.png" for i in range(4)}
    assert [r["prompt"] for r in sorted(report["per_sample"], key=lambda r: r["row"])] == [CAPTIONS[i] for i in sorted(r["row"] for r in report["per_sample"])]

    swapped = write_samples(tmp_path / "swapped", images[1:] + images[:1], [f"sub/photo{i}.png" for i in range(4)])
    poor = evaluate(EvalConfig(samples=swapped, output=tmp_path / "swapped.json", dataset=str(canny_ds), worst=2)).report
    f1 = poor["metrics"]["f1"]
    assert f1["mean"] < 0.4 and f1["ci"][0] <= f1["mean"] <= f1["ci"][1] and f1["n"] == 4
    # The per-sample value is the F1 of canny (with the dataset's thresholds) on the sample, brought
    # to its condition's size, against the stored map.
    import datasets

    rows = datasets.load_dataset(str(canny_ds), split="train")
    for record in poor["per_sample"]:
        condition = np.asarray(rows[record["row"]]["conditioning_image"])
        sample = fit_to(np.asarray(Image.open(swapped / record["sample"]).convert("RGB")), *condition.shape)
        expected = edge_f1(condition, annotators.create("canny", low_threshold=30, high_threshold=60)([sample])[0])
        assert record["scores"] == pytest.approx(expected)
    # Worst first, two of them, also in the Markdown and on the sheet.
    ranked = sorted(poor["per_sample"], key=lambda r: r["scores"]["f1"])
    assert poor["worst"] == [r["sample"] for r in ranked[:2]]
    markdown = (tmp_path / "swapped.md").read_text()
    assert "| f1 |" in markdown and poor["worst"][0] in markdown and "FID/KID not computed" in markdown
    sheet = Image.open(tmp_path / "swapped-worst.png")
    assert sheet.height > 2 * 64 and sheet.width >= 3 * 64
    assert json.loads((tmp_path / "swapped.json").read_text()) == poor


def test_edge_tolerance_and_limit_are_applied(canny_ds: Path, images: list[np.ndarray], tmp_path: Path) -> None:
    shifted = [np.roll(image, 1, axis=1) for image in images]
    folder = write_samples(tmp_path / "shifted", shifted, [f"photo{i}.png" for i in range(4)])
    exact = evaluate(EvalConfig(samples=folder, output=tmp_path / "a.json", dataset=str(canny_ds), limit=2)).report
    tolerant = evaluate(EvalConfig(samples=folder, output=tmp_path / "b.json", dataset=str(canny_ds), limit=2, edge_tolerance=1)).report
    assert exact["metrics"]["f1"]["n"] == 2 and tolerant["settings"]["edge_tolerance"] == 1
    assert tolerant["metrics"]["f1"]["mean"] > 0.8 > exact["metrics"]["f1"]["mean"]


def test_unpaired_and_unreadable_files_are_skipped_with_their_reason(canny_ds: Path, images: list[np.ndarray], tmp_path: Path) -> None:
    folder = write_samples(tmp_path / "s", images[:1] + images[:1], ["photo0.png", "stranger.png"])
    (folder / "photo1.png").write_bytes(b"not an image")
    report = evaluate(EvalConfig(samples=folder, output=tmp_path / "r.json", dataset=str(canny_ds))).report
    reasons = {s["sample"]: s["reason"] for s in report["skipped"]}
    assert reasons["stranger.png"] == "no dataset row has this file name"
    assert "photo1.png" in reasons and report["counts"]["scored"] == 1


def test_one_line_errors(canny_ds: Path, images: list[np.ndarray], tmp_path: Path) -> None:
    folder = write_samples(tmp_path / "s", images[:1], ["photo0.png"])
    with pytest.raises(EvalError, match="no manifest.jsonl; give --dataset"):
        evaluate(EvalConfig(samples=folder, output=tmp_path / "r.json"))
    with pytest.raises(EvalError, match="not annotated with 'hed'; it holds canny"):
        evaluate(EvalConfig(samples=folder, output=tmp_path / "r.json", dataset=str(canny_ds), annotator="hed"))
    with pytest.raises(EvalError, match="not a folder"):
        evaluate(EvalConfig(samples=tmp_path / "missing", output=tmp_path / "r.json", dataset=str(canny_ds)))
    with pytest.raises(ValueError, match="edge_tolerance"):
        EvalConfig(samples=folder, output=tmp_path / "r.json", edge_tolerance=-1)
    # Offline, a Hub id that is not in the cache is said to be unreachable, not to lack a build.json.
    with pytest.raises(EvalError, match="not a local folder, and not reachable on the Hub"):
        evaluate(EvalConfig(samples=folder, output=tmp_path / "r.json", dataset="nobody/not-cached-dataset"))


# --- label maps: an annotator with a segmentation column, built and measured ---------------------

GREY_LEVELS = SegmentationKind("grey-levels", ("dark", "mid", "bright"), ((0, 0, 0), (128, 128, 128), (255, 255, 255)))


@dataclass(frozen=True)
class GreyLevelsConfig(AnnotatorConfig):
    low: int = param(85, "darkest grey level of 'mid'", ge=0, le=255)
    high: int = param(170, "darkest grey level of 'bright'", ge=0, le=255)


class GreyLevels(Annotator):
    """A stand-in segmenter: three classes by brightness. It declares no map kind, only its data kind."""

    name = "grey_levels"
    description = "test: dark, mid and bright pixels as a label map"
    Config = GreyLevelsConfig
    data_kind = GREY_LEVELS

    def _annotate(self, images: list[np.ndarray]) -> list[Annotation]:
        results = []
        for image in images:
            grey = image.mean(axis=2)
            labels = (grey >= self.config.low).astype(np.uint8) + (grey >= self.config.high).astype(np.uint8)
            results.append(Annotation(GREY_LEVELS.colorize(labels), labels))
        return results


def test_label_maps_from_the_segmentation_column_give_miou(registered, images: list[np.ndarray], tmp_path: Path) -> None:
    registered("grey_levels", GreyLevels)
    dataset = write_dataset(tmp_path / "seg", images, CAPTIONS, annotator="grey_levels")
    assert measure_for(GreyLevels).kind == "segmentation"
    same = write_samples(tmp_path / "same", images, [f"{i:05d}.png" for i in range(4)])
    perfect = evaluate(EvalConfig(samples=same, output=tmp_path / "same.json", dataset=str(dataset))).report
    assert perfect["metrics"]["miou"]["mean"] == 1.0 and perfect["metrics"]["pixel_accuracy"]["mean"] == 1.0
    darker = write_samples(tmp_path / "darker", [(image * 0.7).astype(np.uint8) for image in images], [f"{i:05d}.png" for i in range(4)])
    report = evaluate(EvalConfig(samples=darker, output=tmp_path / "darker.json", dataset=str(dataset))).report
    # The label maps of darker images, by hand: the same thresholds on 0.7 x the grey level.
    expected = []
    for image in images:
        grey, dim = image.mean(axis=2), (image * 0.7).astype(np.uint8).mean(axis=2)
        wanted = (grey >= 85).astype(int) + (grey >= 170)
        found = (dim >= 85).astype(int) + (dim >= 170)
        classes = np.union1d(wanted, found)
        expected.append(np.mean([((wanted == c) & (found == c)).sum() / ((wanted == c) | (found == c)).sum() for c in classes]))
    assert report["metrics"]["miou"]["mean"] == pytest.approx(np.mean(expected))
    assert report["metrics"]["miou"]["mean"] < 0.9


# --- the measure comes from the annotator contract -----------------------------------------------


def test_every_registered_annotator_declares_a_known_map_kind_or_none() -> None:
    assert set(MEASURES) == set(MAP_KINDS)
    kinds = {name: annotators.get_class(name).map_kind for name in annotators.names()}
    assert all(kind is None or kind in MAP_KINDS for kind in kinds.values())
    # A new annotator must say what its maps show; only the content shuffle is not measurable.
    assert {name for name, kind in kinds.items() if kind is None} == {"shuffle"}
    assert kinds["canny"] == "edges" and kinds["hed"] == "soft_edges" and kinds["depth_midas"] == "depth"
    assert kinds["openpose"] == "pose" and kinds["normal_bae"] == "normals" and kinds["shuffle"] is None
    with pytest.raises(ValueError, match="declares no map kind"):
        measure_for(annotators.get_class("shuffle"))


# --- text alignment ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded CLIP of a few kilobytes with the real layout (model, tokenizer, image processor)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from controlnet.testing import write_tokenizer

    folder = tmp_path_factory.mktemp("tiny-clip")
    vocab = write_tokenizer(folder)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": vocab, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": vocab - 2, "eos_token_id": vocab - 1, "pad_token_id": vocab - 1},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPProcessor(CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), CLIPTokenizer.from_pretrained(folder))
    processor.save_pretrained(folder)
    return folder


def test_clip_score_of_each_sample_with_its_caption(canny_ds: Path, images: list[np.ndarray], tiny_clip: Path, tmp_path: Path) -> None:
    import torch
    from transformers import CLIPModel, CLIPProcessor

    folder = write_samples(tmp_path / "s", images, [f"photo{i}.png" for i in range(4)])
    report = evaluate(EvalConfig(samples=folder, output=tmp_path / "r.json", dataset=str(canny_ds), clip_model=str(tiny_clip))).report
    clip = report["metrics"]["clip_score"]
    assert clip["n"] == 4 and 0.0 <= clip["mean"] <= 100.0
    model, processor = CLIPModel.from_pretrained(tiny_clip), CLIPProcessor.from_pretrained(tiny_clip)
    record = report["per_sample"][0]
    inputs = processor(text=[record["prompt"]], images=[np.asarray(Image.open(folder / record["sample"]).convert("RGB"))], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
    cosine = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds).item()
    assert record["scores"]["clip_score"] == pytest.approx(100 * max(cosine, 0.0), abs=1e-4)
    assert not any(note.startswith("CLIP") for note in report["notes"])
    with pytest.raises(EvalError, match="CLIP model .* cannot be loaded"):
        evaluate(EvalConfig(samples=folder, output=tmp_path / "r.json", dataset=str(canny_ds), clip_model=str(tmp_path / "no-clip")))


# --- image quality -------------------------------------------------------------------------------


def write_seeded_inception(path: Path) -> Path:
    """torch-fidelity's InceptionV3 with seeded random weights, saved as a plain state dict under
    the published file name (its constructor always loads weights; here it is given none)."""
    from unittest import mock

    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    torch.manual_seed(0)
    with mock.patch("torch_fidelity.feature_extractor_inceptionv3.torch.load", return_value={}), mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict"):
        model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="unused")
    # He initialisation keeps the activations' scale through the 90-odd layers; PyTorch's default
    # shrinks them until every image gives the same features (and FID is 0 whatever the images).
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(model.state_dict(), path)
    return path


def test_fid_and_kid_need_their_library_and_local_weights(canny_ds: Path, images: list[np.ndarray], tmp_path: Path) -> None:
    from controlnet.evaluation.quality import INCEPTION_FILE, QualityMeter

    try:
        import torchmetrics.image.fid  # noqa: F401
    except ImportError:
        meter, why = QualityMeter.create(None)
        assert meter is None and why.startswith("FID/KID not computed: torchmetrics with torch-fidelity is not installed")
        pytest.skip("torchmetrics with torch-fidelity is not installed: only the one-line note is checked")
    meter, why = QualityMeter.create(str(tmp_path / "missing.pth"))
    assert meter is None and f"the Inception weights ({INCEPTION_FILE}) are not on this machine at --inception-weights" in why
    weights = write_seeded_inception(tmp_path / INCEPTION_FILE)
    noisy = [np.clip(image + np.random.default_rng(i).normal(0, 40, image.shape), 0, 255).astype(np.uint8) for i, image in enumerate(images)]
    folder = write_samples(tmp_path / "s", noisy, [f"photo{i}.png" for i in range(4)])
    report = evaluate(EvalConfig(samples=folder, output=tmp_path / "r.json", dataset=str(canny_ds), inception_weights=str(weights))).report
    quality = report["quality"]
    assert quality["n"] == 4 and not any(note.startswith("FID") for note in report["notes"])
    # The same figures as torchmetrics computes directly on the same (dataset image, sample) pairs.
    import datasets
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance

    rows = datasets.load_dataset(str(canny_ds), split="train")
    fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(weights))
    for record in report["per_sample"]:
        for image, real in ((np.asarray(rows[record["row"]]["image"]), True), (np.asarray(Image.open(folder / record["sample"])), False)):
            fid.update(torch.from_numpy(image.transpose(2, 0, 1).copy())[None], real=real)
    assert quality["fid"] == pytest.approx(float(fid.compute()), rel=1e-4)
    assert quality["fid"] > 1 and np.isfinite(quality["kid"])
    # Samples equal to the dataset images: no distance left.
    same = write_samples(tmp_path / "same", images, [f"photo{i}.png" for i in range(4)])
    equal = evaluate(EvalConfig(samples=same, output=tmp_path / "same.json", dataset=str(canny_ds), inception_weights=str(weights))).report
    assert abs(equal["quality"]["fid"]) < 1e-2 < quality["fid"] / 100
