"""The builder under faults (issue 18): a full disk, a dead worker, a second writer, hostile files
and captions. Each fault is real where a test can make it so (SIGKILL of a worker process, a small
tmpfs, named pipes), and injected otherwise (ENOSPC at chosen bytes of the shard writer). After
each fault, the committed shards read, and a second run ends with exactly one row per good input."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from controlnet.dataset import card, shards
from controlnet.dataset.build import BuildError, build, shard_paths
from controlnet.dataset.layout import Layout
from controlnet.dataset.pipeline import Row, skip_kind
from controlnet.dataset.sources import DEFAULT_PROMPT, Source, SourceError, SourceItem, open_source
from tests.controlnet import faults
from tests.controlnet.dataset.test_build import FakeNet, _fake_weights, config, rows
from tests.controlnet.helpers import write_photo
from tests.parity import REPO_ROOT


def names(output: Path) -> list[str]:
    return [row["file_name"] for row in rows(output)]


def skipped(output: Path) -> dict[str, str]:
    return {record["file_name"]: record["reason"] for record in map(json.loads, (output / "skipped.jsonl").read_text().splitlines())}


def card_rows(output: Path) -> int:
    line = next(line for line in (output / "README.md").read_text().splitlines() if line.startswith("- Rows: "))
    return int(line.removeprefix("- Rows: "))


def assert_committed_work_usable(output: Path) -> None:
    """Every shard under its final name reads in full, no temporary shard is left, and the card
    claims no row that the shards do not hold."""
    total = 0
    for path in shard_paths(output):
        table = pq.read_table(path)
        assert table.num_rows == pq.read_metadata(path).num_rows > 0
        total += table.num_rows
    assert not list((output / "data").glob(".*.tmp"))
    assert card_rows(output) == total


@pytest.fixture()
def pngs(tmp_path: Path) -> Path:
    """Ten small photographs as PNG (stored as they are at resolution 64: their bytes fill the shards)."""
    folder = tmp_path / "images"
    for i in range(10):
        write_photo(folder / f"{i:02d}.png", i, 64, 64, fmt="PNG")
    return folder


# --------------------------------------------------------------------------- a full disk


class Disk:
    """``capacity`` bytes shared by every shard file; a write beyond them is cut short, then ENOSPC."""

    def __init__(self, capacity: int) -> None:
        self.free = capacity


class ShardFile(io.FileIO):
    def __init__(self, path: Any, mode: str, disk: Disk) -> None:
        super().__init__(path, mode)
        self.disk = disk

    def write(self, data: Any) -> int:
        data = memoryview(data).cast("B")
        if len(data) > self.disk.free:
            super().write(data[: self.disk.free])
            self.disk.free = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.disk.free -= len(data)
        return super().write(data)


@pytest.fixture()
def reference(pngs: Path, tmp_path: Path) -> tuple[Path, list[int]]:
    """The dataset built with room to spare, and the sizes of its four shards."""
    output = tmp_path / "reference"
    build(config(pngs, output, resolution=64, shard_size=3))
    return output, [path.stat().st_size for path in shard_paths(output)]


# Where the disk fills up: at the first byte, in the first shard's row group, in its footer (the last
# bytes written), and halfway through the second shard once the first is committed.
FULL_AT = {
    "first byte": lambda sizes: 0,
    "first row group": lambda sizes: sizes[0] // 2,
    "footer": lambda sizes: sizes[0] - 300,
    "end marker": lambda sizes: sizes[0] - 2,
    "second shard": lambda sizes: sizes[0] + sizes[1] // 2,
}


@pytest.mark.parametrize("where", list(FULL_AT))
def test_a_full_disk_keeps_committed_shards_and_the_next_run_completes(
    where: str, pngs: Path, tmp_path: Path, reference: tuple[Path, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    expected, sizes = reference
    disk = Disk(FULL_AT[where](sizes))
    monkeypatch.setattr(shards, "open", lambda path, mode="r": ShardFile(path, mode, disk), raising=False)
    output = tmp_path / "ds"
    with pytest.raises(BuildError) as info:
        build(config(pngs, output, resolution=64, shard_size=3))
    message = str(info.value)
    assert message.startswith("no space left on the device of") and "run the same command again" in message and "\n" not in message
    assert_committed_work_usable(output)
    assert len(shard_paths(output)) == (1 if where == "second shard" else 0)
    if shard_paths(output):
        assert shard_paths(output)[0].read_bytes() == shard_paths(expected)[0].read_bytes()

    monkeypatch.undo()  # space was freed
    result = build(config(pngs, output, resolution=64, shard_size=3))
    assert names(output) == names(expected) and result.rows == 10
    assert [r["image"] for r in rows(output)] == [r["image"] for r in rows(expected)]
    assert_committed_work_usable(output)


def test_a_full_disk_at_fsync_or_in_the_skip_log_or_the_card(pngs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (pngs / "bad.png").write_bytes(b"not an image")
    output = tmp_path / "ds"

    def no_space(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    for target, attribute in ((os, "fsync"), (shards.SkipLog, "add"), (card, "write_card")):
        with monkeypatch.context() as patch:
            patch.setattr(target, attribute, no_space)
            with pytest.raises(BuildError, match="no space left"):
                build(config(pngs, output, resolution=64, shard_size=3))
        assert_committed_work_usable(output) if (output / "README.md").exists() else None
    build(config(pngs, output, resolution=64, shard_size=3))
    assert sorted(names(output)) == [f"{i:02d}.png" for i in range(10)]
    assert skipped(output).keys() == {"bad.png"}
    assert_committed_work_usable(output)


@pytest.fixture()
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB filesystem (tmpfs), where mounting is permitted (root on Linux); skipped elsewhere."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_real_full_filesystem(tmpfs: Path, tmp_path: Path, workers: int) -> None:
    """With 2 workers, each writes its own shards: the one that finds the disk full stops the build,
    and the other closes its shard if there is room for it."""
    folder = tmp_path / "big-images"
    for i in range(16):  # about 3.5 MiB of PNG, more than the 2 MiB disk holds
        write_photo(folder / f"{i:02d}.png", i, 384, 384, fmt="PNG")
    output = tmpfs / "ds"
    with pytest.raises(BuildError, match="no space left on the device"):
        build(config(folder, output, resolution=384, shard_size=2, workers=workers, batch_size=1))
    assert_committed_work_usable(output)
    kept = names(output)
    assert 0 < len(kept) < 16

    subprocess.run(["mount", "-o", "remount,size=16m", str(tmpfs)], check=True)  # the disk grows
    result = build(config(folder, output, resolution=384, shard_size=2, workers=workers, batch_size=1))
    assert set(names(output)[: len(kept)]) == set(kept)
    assert sorted(names(output)) == [f"{i:02d}.png" for i in range(16)] and result.rows == 16
    assert_committed_work_usable(output)


# --------------------------------------------------------------------------- damaged folders


def test_an_unreadable_shard_is_reported_and_rebuilt(pngs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    output = tmp_path / "ds"
    build(config(pngs, output, resolution=64, shard_size=3))
    first = shard_paths(output)[0].read_bytes()
    damaged = shard_paths(output)[2]
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])  # "Parquet magic bytes not found"
    with caplog.at_level(logging.WARNING, logger="controlnet.dataset"):
        result = build(config(pngs, output, resolution=64, shard_size=3))
    assert "data/train-00002.parquet cannot be read" in caplog.text and "built again" in caplog.text
    assert result.rows_added == 3 and result.rows == 10
    assert sorted(names(output)) == [f"{i:02d}.png" for i in range(10)]
    assert shard_paths(output)[0].read_bytes() == first
    assert_committed_work_usable(output)


def test_a_file_name_stored_twice_is_refused(pngs: Path, tmp_path: Path) -> None:
    output = tmp_path / "ds"
    build(config(pngs, output, resolution=64, shard_size=3))
    shutil.copy(shard_paths(output)[1], output / "data" / "train-00009.parquet")  # as two concurrent builds left it
    with pytest.raises(BuildError, match=r"stores '03\.png' twice \(train-00001\.parquet and train-00009\.parquet\).*--overwrite"):
        build(config(pngs, output, resolution=64, shard_size=3))
    build(config(pngs, output, resolution=64, shard_size=3, overwrite=True))
    assert sorted(names(output)) == [f"{i:02d}.png" for i in range(10)]


@pytest.mark.parametrize("damage", [b"{not json", b"\xff\xfe binary", b"[1, 2]", b""])
def test_overwrite_recovers_a_damaged_build_json(damage: bytes, pngs: Path, tmp_path: Path) -> None:
    output = tmp_path / "ds"
    build(config(pngs, output, resolution=64, shard_size=4))
    (output / "build.json").write_bytes(damage)
    with pytest.raises(BuildError, match="build.json cannot be read .*use --overwrite"):
        build(config(pngs, output, resolution=64, shard_size=4))
    result = build(config(pngs, output, resolution=64, shard_size=4, overwrite=True))
    assert result.rows == result.rows_added == 10
    assert json.loads((output / "build.json").read_text())["resolution"] == 64


def test_a_build_holding_the_folder_refuses_a_second_one(pngs: Path, tmp_path: Path) -> None:
    """The lock is held by another process (it could be a build); this process's build is refused."""
    output = tmp_path / "ds"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from pathlib import Path; from controlnet.dataset.lock import OutputLock; lock = OutputLock(Path({str(output)!r})).__enter__(); print('held', flush=True); input()"],
        cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(BuildError, match=rf"^{output} is in use by a build \(process {holder.pid}\); wait for it to end, or choose another output folder$"):
            build(config(pngs, output, resolution=64))
        assert not (output / "build.json").exists()
    finally:
        holder.communicate("\n", timeout=30)
    assert build(config(pngs, output, resolution=64)).rows == 10  # released when its process ended


def test_a_build_starting_in_the_same_folder_meanwhile_is_not_taken_for_foreign_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same command run twice at once: the first creates the folder and its lock file just as
    the second looks at it. The second must go on to the lock (and wait its turn or be told the
    folder is in use), not call the folder someone else's."""
    from controlnet.dataset import resume
    from controlnet.dataset.layout import LOCK_FILE

    output = tmp_path / "ds"
    output.mkdir()
    listed = Path.iterdir

    def the_other_build_starts_first(folder: Path) -> Iterator[Path]:
        if folder == output and not (output / LOCK_FILE).exists():
            (output / LOCK_FILE).write_text("12345\n")
            (output / ".build.json.tmp").write_text("{}")
        return listed(folder)

    monkeypatch.setattr(Path, "iterdir", the_other_build_starts_first)
    resume.check_output(output)  # no BuildError: the lock is found once the folder is listed
    assert (output / LOCK_FILE).exists()


def test_no_lock_file_is_left_in_a_folder_that_is_refused(pngs: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(BuildError, match="not empty"):
        build(config(pngs, foreign, resolution=64))
    assert [p.name for p in foreign.iterdir()] == ["precious.txt"]


def test_a_read_only_output_folder_is_one_line(pngs: Path, tmp_path: Path) -> None:
    place = tmp_path / "read-only"
    place.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(place)], capture_output=True)
    if done.returncode != 0:
        if os.geteuid() == 0:
            pytest.skip("root ignores permissions, and cannot mount a read-only filesystem here")
        place.chmod(0o555)
    try:
        with pytest.raises(BuildError, match=r"^cannot write to .*read-only/ds \((Read-only file system|Permission denied)\)$"):
            build(config(pngs, place / "ds", resolution=64))
    finally:
        if done.returncode == 0:
            subprocess.run(["umount", "-l", str(place)], check=False)


# --------------------------------------------------------------------------- dead workers


def test_a_worker_killed_once_is_replaced_and_its_chunk_retried(pngs: Path, tmp_path: Path, registered, caplog: pytest.LogCaptureFixture) -> None:
    """The worker annotating the magenta image SIGKILLs itself the first time, losing the shard it
    was writing (03.png, 04.png, 04b.png, with chunks of 2): a new worker retries 04b.png alone, the
    shard is written again, and every input still becomes a row, in input order."""
    registered(faults.NAME, faults.FaultCanny)
    faults.write_magenta(pngs / "04b.png")
    params = {faults.NAME: {"die": "first", "die_marker": str(tmp_path / "died")}}
    with caplog.at_level(logging.WARNING, logger="controlnet.dataset"):
        result = build(config(pngs, tmp_path / "ds", names=(faults.NAME,), params=params, resolution=64, workers=2, batch_size=2, shard_size=4))
    assert (tmp_path / "died").exists()
    assert "a worker process died (process " in caplog.text and "killed by SIGKILL) while processing 04b.png;" in caplog.text
    assert "a new worker retries its inputs one by one" in caplog.text
    assert names(tmp_path / "ds") == sorted(p.name for p in pngs.iterdir()) and result.skipped == 0


def test_the_inputs_a_dead_worker_skipped_are_not_done_again(pngs: Path, tmp_path: Path, registered) -> None:
    """The second shard is 05a.png (not an image), 05b.png (kills its worker once), 06..09: the shard
    written again after the death leaves out 05a.png, which is recorded once."""
    registered(faults.NAME, faults.FaultCanny)
    (pngs / "05a.png").write_bytes(b"not an image")
    faults.write_magenta(pngs / "05b.png")
    params = {faults.NAME: {"die": "first", "die_marker": str(tmp_path / "died")}}
    output = tmp_path / "ds"
    result = build(config(pngs, output, names=(faults.NAME,), params=params, resolution=64, workers=2, batch_size=1, shard_size=6))
    assert (tmp_path / "died").exists()
    assert (output / "skipped.jsonl").read_text().count("05a.png") == 1 and result.skipped == 1
    assert names(output) == [f"{i:02d}.png" for i in range(6)] + ["05b.png"] + [f"{i:02d}.png" for i in range(6, 10)]
    assert_committed_work_usable(output)


def test_an_input_that_kills_its_worker_twice_is_skipped_and_recorded(pngs: Path, tmp_path: Path, registered, caplog: pytest.LogCaptureFixture) -> None:
    registered(faults.NAME, faults.FaultCanny)
    faults.write_magenta(pngs / "04b.png")
    params = {faults.NAME: {"die": "always"}}
    output = tmp_path / "ds"
    with caplog.at_level(logging.WARNING, logger="controlnet.dataset"):
        result = build(config(pngs, output, names=(faults.NAME,), params=params, resolution=64, workers=2, batch_size=3))
    assert names(output) == [f"{i:02d}.png" for i in range(10)]
    reason = skipped(output)["04b.png"]
    assert reason.startswith("its worker process died twice while processing it (process ") and "SIGKILL" in reason
    assert result.skip_kinds == {"crashed its worker": 1} and skip_kind(reason) == "crashed its worker"
    assert "04b.png: its worker process died again (process " in caplog.text
    assert build(config(pngs, output, names=(faults.NAME,), params=params, resolution=64, workers=2)).rows_added == 0  # recorded: not tried again


def test_workers_writing_shards_keep_the_rows_in_hand_when_the_build_is_interrupted(tmp_path: Path) -> None:
    """Ctrl-C (here: raised by the progress callback) while 2 workers each write a shard of 12
    inputs: they close their shards after the chunk in hand, the card counts those rows, and the
    next run adds exactly the rest."""
    folder = tmp_path / "images"
    for i in range(24):
        write_photo(folder / f"{i:02d}.png", i, 64, 64, fmt="PNG")
    output = tmp_path / "ds"
    reports = 0

    def interrupt(progress: Any) -> None:
        nonlocal reports
        reports += 1
        if reports == 4:  # the start, then 3 chunks of 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build(config(folder, output, resolution=64, workers=2, batch_size=2, shard_size=12), interrupt)
    assert_committed_work_usable(output)
    kept = names(output)
    assert 6 <= len(kept) < 24  # the 3 chunks reported, at least, and not everything
    assert {"00.png", "01.png", "12.png", "13.png"} <= set(kept)  # each shard holds at least its first chunk
    result = build(config(folder, output, resolution=64, workers=2, batch_size=2, shard_size=12))
    assert result.rows_added == 24 - len(kept) and sorted(names(output)) == [f"{i:02d}.png" for i in range(24)]
    assert_committed_work_usable(output)


def test_a_worker_that_dies_decoding_for_a_central_annotator_costs_one_input(pngs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With an annotator in this process (an accelerator's place), the workers only decode: one
    that dies on 04b.png, every time, has its chunk retried input by input, and 04b.png is skipped."""
    from controlnet.dataset.pipeline import Pipeline

    faults.write_magenta(pngs / "04b.png")
    prepare = Pipeline.guarded_prepare

    def dies_on_04b(self: Pipeline, item: SourceItem) -> Any:
        if item.file_name == "04b.png":
            os.kill(os.getpid(), 9)
        return prepare(self, item)

    monkeypatch.setattr(Pipeline, "guarded_prepare", dies_on_04b)  # forked workers inherit it
    output = tmp_path / "ds"
    result = build(config(pngs, output, resolution=64, workers=2, central=True, batch_size=3))
    assert names(output) == [f"{i:02d}.png" for i in range(10)]
    assert skipped(output)["04b.png"].startswith("its worker process died twice while processing it (process ")
    assert result.skip_kinds == {"crashed its worker": 1}
    assert_committed_work_usable(output)


def test_a_worker_that_cannot_write_stops_the_build_in_one_line(pngs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk met by the workers writing the shards (each forked with its own copy of the
    injected disk): the first one's error stops the build, as when this process writes."""
    monkeypatch.setattr(shards, "open", lambda path, mode="r": ShardFile(path, mode, Disk(0)), raising=False)
    output = tmp_path / "ds"
    with pytest.raises(BuildError, match="^no space left on the device of .* run the same command again to continue$"):
        build(config(pngs, output, resolution=64, workers=2, batch_size=1, shard_size=3))
    assert shard_paths(output) == [] and not list((output / "data").glob(".*.tmp"))
    monkeypatch.undo()
    assert build(config(pngs, output, resolution=64, workers=2, batch_size=1, shard_size=3)).rows == 10
    assert_committed_work_usable(output)


def test_a_worker_killed_from_outside_is_detected(pngs: Path, tmp_path: Path, registered, caplog: pytest.LogCaptureFixture) -> None:
    """As the out-of-memory killer does: another process sends SIGKILL to the busy worker."""
    registered(faults.NAME, faults.FaultCanny)
    faults.write_magenta(pngs / "04b.png")
    gate = tmp_path / "gate"
    gate.write_text("closed")
    killed: list[int] = []

    def killer() -> None:
        pid_file = Path(f"{gate}.pid")
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                text = pid_file.read_text() if pid_file.exists() else ""
                if text.strip():  # written in full
                    break
                time.sleep(0.01)
            pid = int(pid_file.read_text())
            if pid != os.getpid():  # a worker, never this process
                os.kill(pid, 9)
                killed.append(pid)
        finally:
            gate.unlink()  # the retried image goes through (and the build never waits forever)

    thread = threading.Thread(target=killer)
    thread.start()
    with caplog.at_level(logging.WARNING, logger="controlnet.dataset"):
        result = build(config(pngs, tmp_path / "ds", names=(faults.NAME,), params={faults.NAME: {"hang_while": str(gate)}}, resolution=64, workers=2, batch_size=2))
    thread.join()
    assert killed and f"process {killed[0]}: killed by SIGKILL" in caplog.text
    assert result.rows == 11 and result.skipped == 0
    assert names(tmp_path / "ds") == sorted(p.name for p in pngs.iterdir())


def test_a_bad_checkpoint_stops_the_build_with_one_line(tmp_path: Path, registered) -> None:
    registered("fake_net", FakeNet)
    write_photo(tmp_path / "images" / "a.png", 0, 64, 64, fmt="PNG")
    write_photo(tmp_path / "images" / "b.png", 1, 64, 64, fmt="PNG")
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "fake_net.pth").write_bytes(os.urandom(300))
    for workers in (1, 2):
        with pytest.raises(BuildError, match=r"^fake_net: cannot load: fake_net\.pth: cannot load checkpoint \(") as info:
            build(config(tmp_path / "images", tmp_path / f"ds{workers}", names=("fake_net",), params={"fake_net": {"weights": str(weights)}}, workers=workers, batch_size=1))
        assert "\n" not in str(info.value) and "weights_only" not in str(info.value)


def test_resuming_with_other_weights_is_refused(tmp_path: Path, registered) -> None:
    import torch

    registered("fake_net", FakeNet)
    write_photo(tmp_path / "images" / "a.png", 0, 64, 64, fmt="PNG")
    first = _fake_weights(tmp_path / "first")
    build(config(tmp_path / "images", tmp_path / "ds", names=("fake_net",), params={"fake_net": {"weights": str(first)}}))
    other = tmp_path / "other"
    other.mkdir()
    torch.save({"weight": torch.ones(1, 3, 1, 1), "unused": torch.zeros(256)}, other / "fake_net.pth")  # another checkpoint, another size
    with pytest.raises(BuildError, match=r"was built with other settings \(weights\.fake_net: .*'bytes'.*--overwrite"):
        build(config(tmp_path / "images", tmp_path / "ds", names=("fake_net",), params={"fake_net": {"weights": str(other)}}))


# --------------------------------------------------------------------------- hostile inputs


@pytest.mark.timeout(60)
def test_pipes_devices_and_large_files_are_skipped_with_their_reason(pngs: Path, tmp_path: Path) -> None:
    os.mkfifo(pngs / "pipe.jpg")  # would hang the build
    (pngs / "zero.jpg").symlink_to("/dev/zero")  # would be read to the end of memory
    (pngs / "big.png").write_bytes(b"\x89PNG" + bytes(30_000))
    os.mkfifo(pngs / "03.txt")  # a caption sidecar that is a pipe
    result = build(config(pngs, tmp_path / "ds", resolution=64, max_file_bytes=20_000))
    reasons = skipped(tmp_path / "ds")
    assert reasons["pipe.jpg"] == "not a regular file (a named pipe)"
    assert reasons["zero.jpg"] == "not a regular file (a character device)"
    assert reasons["big.png"] == "file too large (30004 bytes > 20000)"
    assert reasons["03.png"] == "caption sidecar 03.txt: not a regular file (a named pipe)"
    assert result.skip_kinds == {"not a regular file": 2, "too large": 1, "bad caption": 1}
    assert result.rows == 9


def test_corrupt_jpegs_are_skipped_as_corrupt(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    good = write_photo(folder / "good.jpg", 0, 320, 240)
    middle = len(good) // 2
    (folder / "random.jpg").write_bytes(good[:middle] + np.random.default_rng(3).integers(0, 256, 2000, np.uint8).tobytes() + good[middle + 2000 :])
    (folder / "cut.jpg").write_bytes(good[:middle] + b"\xff\xd9")
    result = build(config(folder, tmp_path / "ds", resolution=64))
    assert names(tmp_path / "ds") == ["good.jpg"] and result.skip_kinds == {"corrupt": 2}
    assert all("libjpeg: Corrupt JPEG data" in reason for reason in skipped(tmp_path / "ds").values())


def test_file_names_that_are_not_utf8_are_stored_escaped(pngs: Path, tmp_path: Path) -> None:
    raw = os.fsencode(pngs) + b"/caf\xe9.png"  # Latin-1 bytes, as old archives carry them
    Path(os.fsdecode(raw)).write_bytes((pngs / "00.png").read_bytes())
    Path(os.fsdecode(os.fsencode(pngs) + b"/caf\xe9.txt")).write_text("a caption")
    output = tmp_path / "ds"
    result = build(config(pngs, output, resolution=64, shard_size=4))
    stored = {row["file_name"]: row for row in rows(output)}
    assert result.rows == 11 and "caf\\xe9.png" in stored
    assert stored["caf\\xe9.png"]["text"] == "a caption" and stored["caf\\xe9.png"]["image"]["path"] == "caf\\xe9.png"
    assert build(config(pngs, output, resolution=64, shard_size=4)).rows_added == 0  # the escaped name is its key on resume


def test_an_unexpected_error_costs_only_its_input(pngs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from controlnet.dataset import pipeline

    decode = pipeline.decode_image_info

    def flaky(data: bytes, *, source: str, **options: Any) -> Any:
        if source.endswith("05.png"):
            raise KeyError("a bug somewhere")
        return decode(data, source=source, **options)

    monkeypatch.setattr(pipeline, "decode_image_info", flaky)
    for workers in (1, 2):
        result = build(config(pngs, tmp_path / f"ds{workers}", resolution=64, workers=workers, batch_size=2))
        assert result.rows == 9 and skipped(tmp_path / f"ds{workers}") == {"05.png": "unexpected error (KeyError: 'a bug somewhere')"}


class _ListedSource(Source):
    def __init__(self, items: list[SourceItem]) -> None:
        self.items = items
        self.identity = {"kind": "test", "items": [item.file_name for item in items]}

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[SourceItem]:
        return iter(self.items)


def test_a_row_arrow_cannot_store_is_skipped_and_the_others_kept(pngs: Path, tmp_path: Path) -> None:
    """A caption with a lone surrogate passes no source's checks, so it is made here: the writer
    finds the row at fault when its row group is converted, and keeps the rest."""
    items = [SourceItem(p.name, DEFAULT_PROMPT, path=str(p)) for p in sorted(pngs.iterdir())]
    items[6] = SourceItem(items[6].file_name, "bad \ud800 caption", path=items[6].path)
    output = tmp_path / "ds"
    result = build(config(pngs, output, resolution=64, shard_size=4), source=_ListedSource(items))
    assert result.rows == 9 and names(output) == [item.file_name for i, item in enumerate(items) if i != 6]
    assert skipped(output)[items[6].file_name].startswith("unexpected error (row cannot be stored: UnicodeEncodeError")
    assert_committed_work_usable(output)


def test_shard_writer_rejects_only_the_bad_row(tmp_path: Path) -> None:
    layout = Layout.of([("canny", None)])
    (tmp_path / "data").mkdir()
    writer = shards.ShardWriter(tmp_path, layout, shard_size=10, next_index=0)
    data = b"any bytes: the writer stores images, it does not decode them"
    for name in ["a", "b\udcff", "c"]:
        writer.add(Row(name, "caption", data, f"{name}.png", 1, 1, [data], [], []))
    writer.close()
    assert [row.file_name for row, _ in writer.rejected] == ["b\udcff"] and writer.rows_committed == 2
    assert pq.read_table(shard_paths(tmp_path)[0]).column("file_name").to_pylist() == ["a", "c"]


def test_shard_writer_converts_rows_early_and_writes_row_groups_of_a_hundred(tmp_path: Path) -> None:
    """Rows go to Arrow ten at a time (so that they do not sit among the decoder's buffers for a
    whole row group); a row group still holds ROW_GROUP of them, and a bad row costs only itself."""
    layout = Layout.of([("canny", None)])
    (tmp_path / "data").mkdir()
    writer = shards.ShardWriter(tmp_path, layout, shard_size=1000, next_index=0)
    data = b"any bytes"
    names = [f"{i:03d}" if i != 42 else "bad\udcff" for i in range(250)]
    for count, name in enumerate(names, start=1):
        writer.add(Row(name, "caption", data, f"{name}.png", 1, 1, [data], [], []))
        assert len(writer.buffer) == count % shards.ShardWriter.CONVERTED
    writer.close()
    metadata = pq.ParquetFile(shard_paths(tmp_path)[0]).metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [99, 100, 50]
    assert pq.read_table(shard_paths(tmp_path)[0]).column("file_name").to_pylist() == [name for name in names if name != "bad\udcff"]


def test_hidden_files_and_folders_are_not_inputs(pngs: Path, tmp_path: Path) -> None:
    write_photo(pngs / ".hidden.png", 1, 64, 64, fmt="PNG")
    write_photo(pngs / "._00.png", 1, 64, 64, fmt="PNG")  # a macOS resource fork next to 00.png
    write_photo(pngs / ".cache" / "x.png", 1, 64, 64, fmt="PNG")
    assert [item.file_name for item in open_source(str(pngs))] == [f"{i:02d}.png" for i in range(10)]


def test_a_build_where_every_input_is_skipped_has_no_rows_and_no_shards(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"not an image")
    result = build(config(folder, tmp_path / "ds"))
    assert (result.rows, result.skipped) == (0, 1) and shard_paths(tmp_path / "ds") == []
    assert card_rows(tmp_path / "ds") == 0


# --------------------------------------------------------------------------- captions


def test_huge_and_hostile_captions_reach_the_rows_whole_and_the_card_bounded_and_escaped(pngs: Path, tmp_path: Path) -> None:
    import yaml

    huge = "a cat " * (10 * 2**20 // 6)  # 10 MB
    (pngs / "00.txt").write_text(huge)
    hostile = "red \x1b[31m alarm\x00 <script>alert(1)</script> | pipe \u202e txt.exe"
    (pngs / "01.txt").write_text(hostile)
    output = tmp_path / "ds"
    build(config(pngs, output, resolution=64))
    stored = {row["file_name"]: row["text"] for row in rows(output)}
    assert stored["00.png"] == huge.strip() and stored["01.png"] == hostile
    text = (output / "README.md").read_text()
    assert len(text.encode()) < 20_000
    header = text.split("---\n")[1]
    assert yaml.safe_load(header)["dataset_info"]["splits"][0]["num_examples"] == 10
    for raw in ("\x1b", "\x00", "<script>", "\u202e"):
        assert raw not in text
    assert "\\x1b[31m alarm\\x00 &lt;script&gt;alert(1)&lt;/script&gt; \\| pipe \\u202e txt.exe" in text
    assert "a cat a cat" in text and "…" in text


def test_captions_that_cannot_be_used_skip_their_image_with_the_reason(pngs: Path, tmp_path: Path) -> None:
    (pngs / "00.txt").write_bytes("caf\xe9".encode("latin-1"))  # not UTF-8
    (pngs / "01.txt").write_bytes("\ufeffwith a byte order mark".encode())
    lines = [
        {"file_name": "02.png", "text": {"en": "an object"}},
        {"file_name": "03.png", "text": ["a", "list"]},
        {"file_name": "04.png", "text": 42},
        {"file_name": "05.png", "text": "plain"},
        {"file_name": "06.png", "text": "\\ud800"},
    ]
    (pngs / "metadata.jsonl").write_text("\n".join(json.dumps(line).replace("\\\\ud800", "\\ud800") for line in lines) + "\n")
    output = tmp_path / "ds"
    result = build(config(pngs, output, resolution=64))
    assert skipped(output) == {
        "00.png": "caption sidecar 00.txt is not UTF-8 text (byte 3)",
        "02.png": "caption in metadata.jsonl line 1 is an object, not text",
        "03.png": "caption in metadata.jsonl line 2 is a list, not text",
        "06.png": "caption in metadata.jsonl line 5 is not valid Unicode text",
    }
    assert result.skip_kinds == {"bad caption": 4}
    texts = {row["file_name"]: row["text"] for row in rows(output)}
    assert texts["01.png"] == "with a byte order mark" and texts["04.png"] == "42" and texts["05.png"] == "plain"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"file_name": "00.png", "text": "fine"}\n{"file_name": "01.png", "text": "broken\n', r"metadata\.jsonl: line 2 is not valid JSON"),
        ('{"file_name": "00.png", "text": "fine"}\n\n' + "[" * 100_000 + "\n", r"metadata\.jsonl: line 3 is nested too deeply"),
        ('{"file_name": "00.png", "text": "fine"}\n"just a string"\n', r"metadata\.jsonl: line 2 is not a JSON object"),
    ],
)
def test_a_metadata_line_that_does_not_parse_refuses_the_build_with_its_number(pngs: Path, content: str, message: str) -> None:
    (pngs / "metadata.jsonl").write_text(content)
    with pytest.raises(SourceError, match=message):
        open_source(str(pngs))


def test_long_csv_captions_are_read(pngs: Path, tmp_path: Path) -> None:
    long = "word " * 60_000  # 300 KB, over the csv module's 128 KiB field limit
    (pngs / "metadata.csv").write_text(f'file_name,text\n00.png,"{long}"\n01.png,short\n')
    captions = {item.file_name: item.caption for item in open_source(str(pngs))}
    assert captions["00.png"] == long and captions["01.png"] == "short"
    (pngs / "metadata.csv").write_text('file_name,text\n00.png,fine\n01.png,"unclosed\n')
    with pytest.raises(SourceError, match=r"metadata\.csv: line 3: malformed CSV"):
        open_source(str(pngs))
