"""Each stored pair agrees with itself: annotating the pixels a reader decodes from ``image`` gives
exactly the stored condition map, for every weight-free annotator, every source format and every
stored format, resized or not; and stored images follow one documented rule for formats and modes."""

from __future__ import annotations

import io
import json
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import annotators
from annotators.image import hwc3
from controlnet.dataset.build import BuildConfig, BuildError, build, shard_paths
from tests.controlnet.helpers import encode, photo

#: every registered annotator that needs no weights at all (bundled models count as weights)
WEIGHT_FREE = tuple(name for name in annotators.names() if annotators.get_class(name).weights is None)
RESOLUTION = 64


def read(data: bytes) -> np.ndarray:
    """What a reader gets: Pillow, as ``datasets`` and diffusers' ``train_controlnet.py`` decode."""
    return hwc3(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def stored_mode(data: bytes) -> tuple[str, str]:
    with Image.open(io.BytesIO(data)) as image:
        return image.format, image.mode


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """JPEG, PNG and WebP photographs that need resizing to 64 and others already at that size, plus
    sources that are always re-encoded: gray, EXIF-rotated, with alpha, palette GIF, TIFF."""
    folder = tmp_path_factory.mktemp("pair-sources")
    save = {"JPEG": {"quality": 90}, "PNG": {}, "WEBP": {"quality": 80}}
    for index, fmt in enumerate(("JPEG", "PNG", "WEBP")):
        suffix = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[fmt]
        (folder / f"resized.{suffix}").write_bytes(encode(photo(index, 150, 90), fmt, **save[fmt]))
        (folder / f"exact.{suffix}").write_bytes(encode(photo(index + 1, 128, 64), fmt, **save[fmt]))
    gray = np.asarray(Image.fromarray(photo(2, 100, 70)).convert("L"))
    (folder / "gray" / "resized.jpg").parent.mkdir()
    (folder / "gray" / "resized.jpg").write_bytes(encode(gray, "JPEG", quality=90))
    (folder / "gray" / "resized.png").write_bytes(encode(gray, "PNG"))
    (folder / "gray" / "exact.png").write_bytes(encode(np.ascontiguousarray(gray[:64, :64]), "PNG"))
    rotated = Image.fromarray(photo(3, 64, 128))
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    rotated.save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    (folder / "rotated.jpg").write_bytes(buffer.getvalue())
    rgba = np.dstack([photo(0, 128, 64), np.linspace(0, 255, 128 * 64, dtype=np.uint8).reshape(64, 128)])
    (folder / "alpha.png").write_bytes(encode(rgba, "PNG"))
    (folder / "palette.gif").write_bytes(encode(np.asarray(Image.fromarray(photo(1, 96, 64)).convert("P")), "GIF"))
    (folder / "photo.tif").write_bytes(encode(photo(2, 128, 64), "TIFF"))
    return folder


def build_pairs(sources: Path, output: Path, **options: object) -> list[dict]:
    specs = tuple((name, annotators.get_class(name).Config()) for name in WEIGHT_FREE)
    result = build(BuildConfig(input=str(sources), output=output, annotators=specs, workers=1, resolution=RESOLUTION, **options))
    assert result.skipped == 0
    return [row for path in shard_paths(output) for row in pq.read_table(path).to_pylist()]


@pytest.mark.parametrize(
    "options",
    [{}, {"image_format": "jpeg"}, {"image_format": "png"}, {"image_format": "webp"}, {"image_format": "jpeg", "jpeg_quality": 40}, {"keep_size": True}],
    ids=["auto", "jpeg", "png", "webp", "jpeg-q40", "keep-size"],
)
def test_reannotating_the_stored_image_gives_the_stored_maps(sources: Path, tmp_path: Path, options: dict) -> None:
    rows = build_pairs(sources, tmp_path / "ds", **options)
    assert len(rows) == 13
    instances = {name: annotators.create(name) for name in WEIGHT_FREE}
    for row in rows:
        image = read(row["image"]["bytes"])
        for name, annotator in instances.items():
            stored = read(row[name]["bytes"])
            (again,) = annotator([image])
            assert np.array_equal(again, stored), f"{row['file_name']}: {name} of the stored image differs from the stored map ({np.mean(again != stored):.2%} of values)"


def test_stored_images_follow_one_rule_for_formats_modes_and_names(sources: Path, tmp_path: Path) -> None:
    rows = {row["file_name"]: row for row in build_pairs(sources, tmp_path / "ds")}
    expected_names = sorted(p.relative_to(sources).as_posix() for p in sources.rglob("*") if p.is_file())
    assert sorted(rows) == expected_names  # file_name is the source's relative path, suffix included
    for name in ("exact.jpg", "exact.png", "exact.webp", "gray/exact.png"):  # usable as they are: kept byte for byte
        assert rows[name]["image"]["bytes"] == (sources / name).read_bytes()
        assert rows[name]["image"]["path"] == name
    stored = {name: stored_mode(row["image"]["bytes"]) for name, row in rows.items()}
    # auto: JPEG sources are re-encoded as JPEG, every other source as PNG
    assert stored["resized.jpg"] == ("JPEG", "RGB") and stored["rotated.jpg"] == ("JPEG", "RGB")
    assert stored["resized.png"] == stored["resized.webp"] == stored["alpha.png"] == ("PNG", "RGB")
    assert stored["palette.gif"] == stored["photo.tif"] == ("PNG", "RGB")
    # gray sources stay gray, whether kept or re-encoded
    assert stored["gray/resized.jpg"] == ("JPEG", "L") and stored["gray/resized.png"] == stored["gray/exact.png"] == ("PNG", "L")
    for name, row in rows.items():  # the image's own path names what its bytes are
        suffix = {"JPEG": {".jpg", ".jpeg"}, "PNG": {".png"}, "WEBP": {".webp"}}[stored[name][0]]
        assert PurePosixPath(row["image"]["path"]).suffix in suffix
        assert PurePosixPath(row["image"]["path"]).with_suffix("") == PurePosixPath(name).with_suffix("")


def test_image_format_and_quality_choose_how_re_encoded_images_are_stored(sources: Path, tmp_path: Path) -> None:
    webp = {row["file_name"]: row for row in build_pairs(sources, tmp_path / "webp", image_format="webp")}
    assert stored_mode(webp["resized.jpg"]["image"]["bytes"])[0] == "WEBP"
    assert webp["exact.jpg"]["image"]["bytes"] == (sources / "exact.jpg").read_bytes()  # still kept as it is
    high = {row["file_name"]: row for row in build_pairs(sources, tmp_path / "q95", image_format="jpeg")}
    low = {row["file_name"]: row for row in build_pairs(sources, tmp_path / "q40", image_format="jpeg", jpeg_quality=40)}
    assert stored_mode(high["resized.png"]["image"]["bytes"]) == ("JPEG", "RGB")
    assert len(low["resized.png"]["image"]["bytes"]) < len(high["resized.png"]["image"]["bytes"])


def test_image_format_quality_and_decode_are_part_of_the_identity(tmp_path: Path) -> None:
    from controlnet.dataset.sources import open_source

    folder = tmp_path / "images"
    folder.mkdir()
    source = open_source(str(folder))
    base = BuildConfig(input=str(folder), output=tmp_path / "ds", annotators=(("canny", annotators.get_class("canny").Config()),))
    identities = [
        BuildConfig(**{**base.__dict__, **change}).identity(source)
        for change in ({}, {"image_format": "png"}, {"jpeg_quality": 80}, {"decode": "reduced"})
    ]
    assert len({json.dumps(identity, sort_keys=True) for identity in identities}) == 4
    assert identities[0]["decode"] == "exact"
    with pytest.raises(ValueError, match="image_format"):
        BuildConfig(**{**base.__dict__, "image_format": "gif"})
    with pytest.raises(ValueError, match="jpeg_quality"):
        BuildConfig(**{**base.__dict__, "jpeg_quality": 101})
    with pytest.raises(ValueError, match="decode"):
        BuildConfig(**{**base.__dict__, "decode": "fast"})


def test_reduced_decoding_shrinks_large_jpegs_to_the_same_sizes_and_pairs_still_agree(tmp_path: Path) -> None:
    folder = tmp_path / "camera"
    folder.mkdir()
    (folder / "large.jpg").write_bytes(encode(photo(0, 330, 280), "JPEG", quality=90))  # 64 x 64 target: 1/4 scale
    rotated = Image.fromarray(photo(1, 300, 140))
    exif = rotated.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    rotated.save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    (folder / "rotated.jpg").write_bytes(buffer.getvalue())  # 300 x 140 stored, 140 x 300 shown: 1/2 scale
    (folder / "small.jpg").write_bytes(encode(photo(2, 100, 80), "JPEG", quality=90))  # too small to reduce
    (folder / "large.png").write_bytes(encode(photo(3, 330, 280), "PNG"))  # not a JPEG: decoded whole
    exact = {row["file_name"]: row for row in build_pairs(folder, tmp_path / "exact")}
    reduced = {row["file_name"]: row for row in build_pairs(folder, tmp_path / "reduced", decode="reduced")}
    canny = annotators.create("canny")
    for name, row in reduced.items():
        assert (row["height"], row["width"]) == (exact[name]["height"], exact[name]["width"])
        image = read(row["image"]["bytes"])
        assert image.shape[:2] == (row["height"], row["width"])
        np.testing.assert_array_equal(canny([image])[0], read(row["canny"]["bytes"]))
    assert (reduced["rotated.jpg"]["height"], reduced["rotated.jpg"]["width"]) == (128, 64)
    for name in ("small.jpg", "large.png"):  # decoded at full size either way
        assert reduced[name]["image"]["bytes"] == exact[name]["image"]["bytes"]
    for name in ("large.jpg", "rotated.jpg"):  # a different decode: the same picture, not the same pixels
        difference = np.abs(read(reduced[name]["image"]["bytes"]).astype(int) - read(exact[name]["image"]["bytes"]).astype(int))
        assert 0 < difference.mean() < 12  # of 255
    assert "--decode reduced" in (tmp_path / "reduced" / "README.md").read_text()
    assert "--decode" not in (tmp_path / "exact" / "README.md").read_text()
    with pytest.raises(BuildError, match="decode: 'reduced' -> 'exact'"):
        build_pairs(folder, tmp_path / "reduced")


def test_an_output_built_before_the_decode_option_resumes_as_an_exact_one(sources: Path, tmp_path: Path) -> None:
    build_pairs(sources, tmp_path / "ds")
    record = tmp_path / "ds" / "build.json"
    identity = json.loads(record.read_text())
    del identity["decode"]  # as written by the builds before --decode existed
    record.write_text(json.dumps(identity))
    assert len(build_pairs(sources, tmp_path / "ds")) == 13  # resumed: nothing left to do, nothing refused
    with pytest.raises(BuildError, match="decode: 'exact' -> 'reduced'"):
        build_pairs(sources, tmp_path / "ds", decode="reduced")
