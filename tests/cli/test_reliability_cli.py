"""`cn-annotate` under faults: two real processes building into one folder, and the faults that
must end in one line rather than a traceback (a full or read-only disk, a bad checkpoint, an
invalid repository id), plus a build whose every input is skipped."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cli.annotate import app
from controlnet.dataset.build import shard_paths
from tests.controlnet import faults
from tests.controlnet.dataset.test_build import FakeNet
from tests.controlnet.helpers import write_photo

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def names(output: Path) -> list[str]:
    return [name for path in shard_paths(output) for name in pq.read_table(path, columns=["file_name"]).column(0).to_pylist()]


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    for i in range(6):
        write_photo(images / f"{i}.jpg", i, 80, 64)
    return images


def _build(folder: Path, output: Path, *extra: str) -> list[str]:
    return faults.command(faults.NAME, str(folder), "-o", str(output), "--workers", "1", "--resolution", "64", *extra)


def test_a_second_build_into_a_busy_folder_is_refused_naming_the_first(folder: Path, tmp_path: Path) -> None:
    faults.write_magenta(folder / "9-blocker.png")
    output, gate = tmp_path / "ds", tmp_path / "gate"
    gate.write_text("closed")
    first = subprocess.Popen(_build(folder, output, "--hang-while", str(gate)), cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not Path(f"{gate}.pid").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert first.poll() is None, first.communicate()[0]
        second = subprocess.run(_build(folder, output), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert second.stderr.strip() == f"error: {output} is in use by a build (process {first.pid}); wait for it to end, or choose another output folder"
        gate.unlink()
        assert first.wait(timeout=120) == 0, first.communicate()[0]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert names(output) == sorted(p.name for p in folder.iterdir())


def test_two_identical_commands_started_together_leave_one_row_per_input(folder: Path, tmp_path: Path, registered) -> None:  # type: ignore[no-untyped-def]
    for i in range(6, 30):
        write_photo(folder / f"{i}.jpg", i, 80, 64)
    output = tmp_path / "ds"
    command = _build(folder, output, "--shard-size", "5")
    both = [subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(process.wait(timeout=180), *process.communicate()) for process in both]
    for code, _, err in results:
        assert "Traceback" not in err
        assert code == 0 or (code == 2 and "is in use by a build (process" in err), err
    assert any(code == 0 for code, _, _ in results)
    stored = names(output)
    assert sorted(stored) == sorted(p.name for p in folder.iterdir()) and len(stored) == len(set(stored))
    registered(faults.NAME, faults.FaultCanny)
    code, said = run(faults.NAME, str(folder), "-o", str(output), "--workers", "1", "--resolution", "64")
    assert code == 0 and "30 (0 added now)" in said, said


@pytest.fixture()
def mounted(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Mounts a tmpfs with the given options where permitted (root on Linux); skips otherwise."""
    places: list[Path] = []

    def mount(options: str) -> Path:
        place = tmp_path / f"mount{len(places)}"
        place.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(place)], capture_output=True).returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        places.append(place)
        return place

    yield mount
    for place in places:
        subprocess.run(["umount", "-l", str(place)], check=False)


def test_a_full_disk_is_one_line(tmp_path: Path, mounted) -> None:  # type: ignore[no-untyped-def]
    disk = mounted("size=1m")
    images = tmp_path / "big"
    for i in range(8):
        write_photo(images / f"{i}.png", i, 320, 320, fmt="PNG")
    code, said = run("canny", str(images), "-o", str(disk / "ds"), "--workers", "1", "--resolution", "320", "--shard-size", "2")
    assert code == 2 and "Traceback" not in said
    assert error_lines(said) == [
        f"error: no space left on the device of {disk / 'ds'}: the finished shards are kept and the open one is discarded; "
        "free some space and run the same command again to continue"
    ]


def test_a_read_only_output_is_one_line(folder: Path, mounted) -> None:  # type: ignore[no-untyped-def]
    place = mounted("ro,size=1m")
    code, said = run("canny", str(folder), "-o", str(place / "ds"), "--workers", "1")
    assert code == 2 and "Traceback" not in said
    assert error_lines(said) == [f"error: cannot write to {place / 'ds'} (Read-only file system)"]


def test_a_bad_checkpoint_during_a_build_is_one_line(folder: Path, tmp_path: Path, registered) -> None:  # type: ignore[no-untyped-def]
    registered("fake_net", FakeNet)
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "fake_net.pth").write_bytes(b"PK\x03\x04" + os.urandom(200))  # looks like a zip, is not one
    code, said = run("fake_net", str(folder), "-o", str(tmp_path / "ds"), "--weights", str(weights), "--workers", "2", "--batch-size", "1")
    assert code == 2 and "Traceback" not in said
    (line,) = error_lines(said)
    assert line.startswith("error: fake_net: cannot load: fake_net.pth: cannot load checkpoint (") and "weights_only" not in line


def test_every_input_skipped_prints_no_load_line(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"not an image")
    (images / "b.png").write_bytes(b"")
    code, said = run("canny", str(images), "-o", str(tmp_path / "ds"), "--workers", "1")
    assert code == 0
    assert "load with" not in said and "load_dataset" not in said
    assert "no rows: every input was skipped" in said


@pytest.mark.parametrize("repo_id", ["not valid!", "a/b/c", "user/data..set"])
def test_push_with_an_invalid_repository_id_says_so(folder: Path, tmp_path: Path, repo_id: str) -> None:
    assert run("canny", str(folder), "-o", str(tmp_path / "ds"), "--workers", "1", "--resolution", "64")[0] == 0
    code, said = run("push", str(tmp_path / "ds"), repo_id)
    assert code == 1 and said.startswith(f"error: {repo_id!r} is not a valid repository id (") and said.count("\n") == 1
    assert "cannot reach the Hub" not in said
