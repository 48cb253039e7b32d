"""Files that are not what they claim: pipes and devices posing as images, corrupt JPEGs that
libjpeg decodes to grey, images over Pillow's own pixel guard, float TIFFs, damaged checkpoints.
Every file is generated here."""

from __future__ import annotations

import io
import os
import pickle
import random
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from annotators.files import FileRefusedError, read_regular_file
from annotators.image import ImageError, decode_image, decode_image_info, read_image_file
from annotators.weights import load_checkpoint


def _jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


# --------------------------------------------------------------------------- only regular files, bounded


def test_regular_file_is_read_up_to_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"x" * 100)
    assert read_regular_file(path, 100) == b"x" * 100
    with pytest.raises(FileRefusedError, match=r"file too large \(100 bytes > 99\)"):
        read_regular_file(path, 99)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc")
def test_a_file_with_more_bytes_than_its_size_says_is_read_whole_and_bounded() -> None:
    """As a file that grows while it is read: /proc files have a size of 0 and hold text."""
    assert os.stat("/proc/self/status").st_size == 0
    assert b"VmHWM" in read_regular_file("/proc/self/status")
    with pytest.raises(FileRefusedError, match=r"file too large \(over 10 bytes\)"):
        read_regular_file("/proc/self/status", 10)


@pytest.mark.timeout(30)
def test_named_pipe_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "b.jpg"
    os.mkfifo(fifo)  # no writer: reading it would block forever
    with pytest.raises(FileRefusedError, match=r"not a regular file \(a named pipe\)"):
        read_regular_file(fifo)
    with pytest.raises(ImageError, match="b.jpg: not a regular file"):
        decode_image(fifo)


@pytest.mark.timeout(30)
def test_link_to_a_device_is_refused_before_reading(tmp_path: Path) -> None:
    link = tmp_path / "zero.jpg"
    link.symlink_to("/dev/zero")  # endless: reading it would take all memory
    with pytest.raises(ImageError, match=r"not a regular file \(a character device\)"):
        read_image_file(link)
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(ImageError, match=r"not a regular file \(a folder\)"):
        read_image_file(tmp_path / "folder.jpg")
    with pytest.raises(ImageError, match="cannot read file"):
        read_image_file(tmp_path / "missing.jpg")


# --------------------------------------------------------------------------- corrupt JPEGs


def _random_middle(data: bytes, seed: int) -> bytes:
    rng = random.Random(seed)
    middle = len(data) // 2
    return data[:middle] + bytes(rng.getrandbits(8) for _ in range(2000)) + data[middle + 2000 :]


@pytest.mark.parametrize("seed", range(4))
def test_jpeg_with_random_bytes_in_the_middle_is_refused(astronaut: np.ndarray, seed: int) -> None:
    data = _random_middle(_jpeg(astronaut), seed)
    # what the issue saw: OpenCV alone decodes it to a picture whose lower part is wrong
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None
    with pytest.raises(ImageError, match=r"corrupt\.jpg: corrupt or truncated image \(libjpeg: Corrupt JPEG data"):
        decode_image(data, source="corrupt.jpg")


@pytest.mark.parametrize("cut", [0.2, 0.5, 0.9])
def test_truncated_jpeg_closed_with_an_end_marker_is_refused(astronaut: np.ndarray, cut: float) -> None:
    data = _jpeg(astronaut)
    patched = data[: int(len(data) * cut)] + b"\xff\xd9"
    with pytest.raises(ImageError, match="corrupt or truncated"):
        decode_image(patched, source="cut.jpg")


def test_jpeg_warnings_are_read_in_every_process_and_other_stderr_passes(astronaut: np.ndarray, capfd: pytest.CaptureFixture[str]) -> None:
    good, bad = _jpeg(astronaut[:64, :64]), _random_middle(_jpeg(astronaut), 1)
    with pytest.raises(ImageError):
        decode_image(bad)
    decode_image(good)  # a good file after a bad one is not blamed for its warning
    pid = os.fork()
    if pid == 0:  # a forked builder worker: its own pipe, its own warnings
        try:
            decode_image(bad)
            code = 1
        except ImageError:
            code = 0 if decode_image(good).shape == (64, 64, 3) else 1
        os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0

    def chatter() -> None:
        os.write(2, b"unrelated text from another thread\n")

    thread = threading.Thread(target=chatter)
    thread.start()
    decode_image(good)
    thread.join()
    err = capfd.readouterr().err
    assert "Corrupt JPEG data" not in err  # libjpeg's warning became the ImageError, not noise
    assert "unrelated text from another thread" in err


# --------------------------------------------------------------------------- limits and formats


def test_max_pixels_above_pillows_own_guard_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow refuses images over 2 x MAX_IMAGE_PIXELS (89.5 MP by default) by itself; here its guard
    is lowered to 10,000 pixels so that a 200x200 image stands for a 144 MP one."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    data = _jpeg(np.full((200, 200, 3), 90, np.uint8))
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))
    assert decode_image(data, max_pixels=50_000).shape == (200, 200, 3)
    assert Image.MAX_IMAGE_PIXELS == 10_000  # restored
    with pytest.raises(ImageError, match="too large"):
        decode_image(data, max_pixels=30_000)


def test_float32_rgb_tiff_decodes() -> None:
    import tifffile

    rng = np.random.default_rng(0)
    unit = rng.random((20, 30, 3)).astype(np.float32)
    for pixels, scale, compression in ((unit, 255.0, None), (unit * 255.0 + 0.5, 1.0, "zlib")):
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, pixels.astype(np.float32), photometric="rgb", compression=compression)
        with pytest.raises(Image.UnidentifiedImageError):
            Image.open(io.BytesIO(buffer.getvalue()))  # what made it "not an image"
        decoded = decode_image_info(buffer.getvalue(), source="hdr.tif")
        assert decoded.format == "TIFF" and not decoded.plain
        expected = np.clip(pixels * scale, 0, 255).round().astype(np.uint8)
        np.testing.assert_array_equal(decoded.pixels, expected)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.ones((2000, 2000, 3), np.float32), photometric="rgb", compression="zlib")
    with pytest.raises(ImageError, match=r"too large \(2000x2000"):
        decode_image(buffer.getvalue(), max_pixels=1_000_000)  # refused from the header, before decoding


# --------------------------------------------------------------------------- checkpoints


def test_corrupt_safetensors_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\xff" * 64)  # an 8-byte header length far beyond the file: "header too large"
    with pytest.raises(ValueError, match=r"^model\.safetensors: cannot load checkpoint \(not a valid safetensors file: .*header too large\)$") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_pickle_refusal_never_advises_unsafe_loading(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("this must never run",))

    import torch

    path = tmp_path / "evil.pth"
    torch.save({"w": Payload()}, path)  # torch's own format, with code in it
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "weights_only" not in message and "\x1b" not in message and "\n" not in message
    assert "holds Python objects" in message and "GLOBAL print" in message and "safetensors" in message
    for damaged in (pickle.dumps({"w": 1}), path.read_bytes()[:20], os.urandom(300)):  # a bare pickle, cut short, noise
        path.write_bytes(damaged)
        with pytest.raises(ValueError, match=r"^evil\.pth: cannot load checkpoint \(") as info:
            load_checkpoint(path)
        assert "weights_only" not in str(info.value) and "\n" not in str(info.value)
