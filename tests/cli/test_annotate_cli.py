"""`cn-annotate NAME INPUT -o OUT_DIR` and `cn-annotate push`, in process and as real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cli.annotate import app
from controlnet.dataset.build import shard_paths
from tests.controlnet import faults
from tests.controlnet.helpers import write_bad_files, write_photo

REPO = Path(__file__).resolve().parents[2]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def names(output: Path) -> list[str]:
    return [name for path in shard_paths(output) for name in pq.read_table(path, columns=["file_name"]).column(0).to_pylist()]


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    for i in range(3):
        write_photo(images / f"{i}.jpg", i, 80, 64)
    return images


def test_build_summary_skips_and_strict(folder: Path, tmp_path: Path) -> None:
    write_bad_files(folder / "bad")
    code, output = run("canny", str(folder), "-o", str(tmp_path / "ds"), "--workers", "1", "--resolution", "64", "--preview", str(tmp_path / "sheet.png"))
    assert code == 0, output
    assert "4 (4 added now)" in output and "6 (6 now)" in output and "wrote" in output  # huge.png is fine here
    assert (tmp_path / "sheet.png").stat().st_size > 0
    assert len((tmp_path / "ds" / "skipped.jsonl").read_text().splitlines()) == 6
    code, output = run("canny", str(folder), "-o", str(tmp_path / "ds"), "--workers", "1", "--resolution", "64", "--strict")
    assert code == 1 and "skipped (--strict)" in output
    code, output = run("canny", str(folder), "-o", str(tmp_path / "clean"), "--workers", "1", "--resolution", "64", "--strict", "--max-pixels", "1")
    assert code == 1


def test_several_annotators_and_set(folder: Path, tmp_path: Path) -> None:
    code, output = run("canny,scribble_xdog", str(folder), "-o", str(tmp_path / "ds"), "--workers", "2", "--resolution", "64", "--set", "canny.low_threshold=10")
    assert code == 0, output
    identity = json.loads((tmp_path / "ds" / "build.json").read_text())
    assert list(identity["annotators"]) == ["canny", "scribble_xdog"] and identity["annotators"]["canny"]["low_threshold"] == 10
    columns = pq.read_schema(shard_paths(tmp_path / "ds")[0]).names
    assert {"conditioning_image", "canny", "scribble_xdog"} <= set(columns)


def test_changed_parameters_exit_2_with_a_clear_message(folder: Path, tmp_path: Path) -> None:
    assert run("canny", str(folder), "-o", str(tmp_path / "ds"), "--workers", "1", "--resolution", "64")[0] == 0
    code, output = run("canny", str(folder), "-o", str(tmp_path / "ds"), "--workers", "1", "--resolution", "64", "--high-threshold", "150")
    assert code == 2
    assert "high_threshold: 200 -> 150" in output and "--overwrite" in output
    code, output = run("canny", str(folder), "-o", str(tmp_path / "ds"), "--workers", "1", "--resolution", "64", "--high-threshold", "150", "--overwrite")
    assert code == 0, output


def test_unknown_annotator_lists_the_available_ones(folder: Path, tmp_path: Path) -> None:
    code, output = run("cany", str(folder), "-o", str(tmp_path / "ds"))
    assert code == 2
    assert "unknown annotator 'cany'" in output and "canny" in output and "scribble_xdog" in output


def test_missing_input_is_a_one_line_error(tmp_path: Path) -> None:
    code, output = run("canny", str(tmp_path / "nothing-here"), "-o", str(tmp_path / "ds"))
    assert code == 2 and "no such file or folder" in output and "Traceback" not in output


def test_push_offline_is_a_one_line_error(folder: Path, tmp_path: Path) -> None:
    assert run("canny", str(folder), "-o", str(tmp_path / "ds"), "--workers", "1", "--resolution", "64")[0] == 0
    code, output = run("push", str(tmp_path / "ds"), "someone/dataset")  # tests run with HF_HUB_OFFLINE=1
    assert code == 1
    assert output.strip().count("\n") == 0 and "offline" in output
    code, output = run("push", str(folder), "someone/dataset")
    assert code == 1 and "not a built dataset" in output


def _command(list_file: Path, output: Path, gate: Path) -> list[str]:
    return faults.command(
        faults.NAME, str(list_file), "-o", str(output), "--workers", "1", "--batch-size", "1", "--shard-size", "4", "--resolution", "64", "--hang-while", str(gate)
    )


def _wait_for(condition, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the build")
        time.sleep(0.02)


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_resume_after_the_process_is_killed(tmp_path: Path, stop: signal.Signals) -> None:
    """The build hangs on a magenta image while a gate file exists; it is stopped there, the gate is
    removed, and the same command finishes the dataset. SIGTERM keeps the open shard, like Ctrl-C."""
    images = tmp_path / "images"
    listed = []
    for i in range(6):
        write_photo(images / f"{i}.jpg", i, 80, 64)
        listed.append(f"{i}.jpg")
    (images / "bad.jpg").write_bytes(b"not an image")
    listed.insert(3, "bad.jpg")
    faults.write_magenta(images / "blocker.png")
    listed.append("blocker.png")
    for i in range(6, 9):
        write_photo(images / f"{i}.jpg", i, 80, 64)
        listed.append(f"{i}.jpg")
    list_file = images / "list.txt"
    list_file.write_text("\n".join(listed) + "\n")
    output, gate = tmp_path / "ds", tmp_path / "gate"
    gate.write_text("closed")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    process = subprocess.Popen(_command(list_file, output, gate), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: Path(f"{gate}.pid").exists() or process.poll() is not None)
        assert process.poll() is None, process.communicate()[0].decode()
        # the rows after the first shard (4.jpg, 5.jpg) are done but not yet in a shard
        assert len(shard_paths(output)) == 1
        process.send_signal(stop)
        code = process.wait(timeout=60)
        said = process.communicate()[0].decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    first_shard = shard_paths(output)[0].read_bytes()
    assert names(output)[:4] == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]
    if stop == signal.SIGKILL:
        assert code == -signal.SIGKILL
        assert names(output) == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]
    else:  # Ctrl-C or SIGTERM: the rows in hand are written as a last, smaller shard
        assert code == (130 if stop == signal.SIGINT else 143), said
        assert ("interrupted" if stop == signal.SIGINT else "terminated") in said and "Traceback" not in said
        assert names(output) == ["0.jpg", "1.jpg", "2.jpg", "3.jpg", "4.jpg", "5.jpg"]

    gate.unlink()
    finished = subprocess.run(_command(list_file, output, gate), cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "resuming" in finished.stderr
    done = names(output)
    assert sorted(done) == sorted(name for name in listed if name != "bad.jpg") and len(done) == len(set(done))
    skipped = [json.loads(line)["file_name"] for line in (output / "skipped.jsonl").read_text().splitlines()]
    assert skipped == ["bad.jpg"]
    assert shard_paths(output)[0].read_bytes() == first_shard
    assert not list((output / "data").glob(".*"))


def test_min_keypoints_option_for_annotators_that_find_people(tmp_path: Path, registered) -> None:
    from PIL import Image

    registered("fake_pose", "tests.controlnet.dataset.test_build:FakePose")
    images = tmp_path / "images"
    images.mkdir()
    for red in (0, 120, 250):
        Image.new("RGB", (64, 64), (red, 0, 0)).save(images / f"red{red:03d}.png")
    code, output = run("fake_pose", str(images), "-o", str(tmp_path / "ds"), "--workers", "1", "--keep-size", "--min-keypoints", "13")
    assert code == 0, output
    assert names(tmp_path / "ds") == ["red250.png"] and "too few keypoints: 2" in output
    assert "--min-keypoints" not in run("canny", "--help")[1]
