"""Stress test of the dataset builder's resume: real builds stopped at random moments, then resumed.

    OMP_NUM_THREADS=1 python stress/kill_resume.py                      # every mode, 50 trials each
    OMP_NUM_THREADS=1 python stress/kill_resume.py --mode kill --trials 20 --signals KILL,INT,TERM

Modes (each trial in a fresh output folder, each build a real ``cn-annotate canny`` subprocess):

* ``kill``: the build is sent a signal (SIGKILL by default) at a random moment between its start and
  its expected end, then the same command is run again to completion;
* ``chain``: one build is killed ``--trials`` times in a row (during start-up, or just after a shard
  is committed), resuming each time, then finished;
* ``workers``: worker processes of a running build are sent SIGKILL at random moments (as the
  out-of-memory killer does), and the build must finish on its own;
* ``disk``: the build writes to a tmpfs of a random size (1-6 MiB) until the disk is full, the disk
  grows, and the same command finishes (needs root to mount; skipped otherwise).

After each trial the dataset must be exact: every shard reads, the rows are exactly one per good
input, each with the same image, condition map and caption bytes as an undisturbed reference build,
the bad inputs are in ``skipped.jsonl`` once each, no temporary shard is left, and the card counts
the rows the shards hold. (In ``workers`` mode, an input whose worker is killed twice, once when it
is retried alone, is skipped by design; such skips are counted, not failures.) The script prints one
line per trial and a summary, and exits 1 if any trial is not exact.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pyarrow.parquet as pq  # noqa: E402

from tests.controlnet.helpers import write_bad_files, write_photo  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def make_inputs(folder: Path, count: int, seed: int) -> tuple[set[str], set[str]]:
    """``count`` photos (some with captions) and broken files; returns (good, bad) file names."""
    rng = random.Random(seed)
    good = set()
    for i in range(count):
        name = f"p{i:03d}.jpg"
        write_photo(folder / name, i, rng.randrange(150, 300), rng.randrange(150, 300))  # under --max-pixels, which huge.png is not
        if i % 5 == 0:
            (folder / name).with_suffix(".txt").write_text(f"photo number {i}")
        good.add(name)
    bad = {f"bad/{name}" for name in write_bad_files(folder / "bad")}
    return good, bad


def command(images: Path, output: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "cli.annotate", "canny", str(images), "-o", str(output), "--workers", str(workers), "--batch-size", "2", "--shard-size", "7", "--resolution", "128", "--max-pixels", "100000"]


def finish(images: Path, output: Path, workers: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(images, output, workers), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)


def contents(output: Path) -> dict[str, tuple[bytes, bytes, str]]:
    found: dict[str, tuple[bytes, bytes, str]] = {}
    for path in sorted((output / "data").glob("train-*.parquet")):
        for row in pq.read_table(path, columns=["file_name", "image", "conditioning_image", "text"]).to_pylist():
            if row["file_name"] in found:
                raise AssertionError(f"{row['file_name']} stored twice")
            found[row["file_name"]] = (row["image"]["bytes"], row["conditioning_image"]["bytes"], row["text"])
    return found


def check(output: Path, reference: dict[str, tuple[bytes, bytes, str]], bad: set[str], allowed_crashes: bool = False) -> tuple[bool, str, int]:
    """Whether ``output`` is exact (see the module docstring), a reason if not, and crash skips."""
    try:
        stored = contents(output)
        skips = [json.loads(line) for line in (output / "skipped.jsonl").read_text().splitlines()]
    except Exception as err:  # noqa: BLE001 (any failure to read is a failed trial)
        return False, f"unreadable: {type(err).__name__}: {err}", 0
    skipped = [record["file_name"] for record in skips]
    crashed = {record["file_name"] for record in skips if "worker process died twice" in record["reason"]} if allowed_crashes else set()
    if len(skipped) != len(set(skipped)):
        return False, "an input is skipped twice", len(crashed)
    if set(skipped) != bad | crashed:
        return False, f"skips differ: {sorted(set(skipped) ^ (bad | crashed))[:5]}", len(crashed)
    expected = {name: value for name, value in reference.items() if name not in crashed}
    if stored.keys() != expected.keys():
        return False, f"rows differ: {sorted(stored.keys() ^ expected.keys())[:5]}", len(crashed)
    different = [name for name in stored if stored[name] != expected[name]]
    if different:
        return False, f"row contents differ: {different[:5]}", len(crashed)
    if list((output / "data").glob(".*")):
        return False, "a temporary shard is left", len(crashed)
    card_rows = next(int(line[8:]) for line in (output / "README.md").read_text().splitlines() if line.startswith("- Rows: "))
    if card_rows != len(stored):
        return False, f"card claims {card_rows} rows, shards hold {len(stored)}", len(crashed)
    return True, "", len(crashed)


def committed(output: Path) -> int:
    try:
        return sum(pq.read_metadata(path).num_rows for path in (output / "data").glob("train-*.parquet"))
    except Exception:  # noqa: BLE001
        return -1


@dataclass
class Tally:
    trials: int = 0
    exact: int = 0
    crash_skips: int = 0

    def add(self, ok: bool, crashes: int = 0) -> None:
        self.trials += 1
        self.exact += ok
        self.crash_skips += crashes


def kill_trials(args: argparse.Namespace, images: Path, reference: dict[str, Any], bad: set[str], window: tuple[float, float], work: Path) -> Tally:
    rng = random.Random(args.seed + 1)
    signals = [getattr(signal, f"SIG{name.strip().upper()}") for name in args.signals.split(",")]
    tally = Tally()
    for trial in range(args.trials):
        output = work / f"kill-{trial}"
        stop = rng.choice(signals)
        delay = rng.uniform(*window)
        process = subprocess.Popen(command(images, output, args.workers), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        process.send_signal(stop)
        code = process.wait(timeout=120)
        err = process.stderr.read() if process.stderr else ""
        rows_then = committed(output)
        done = finish(images, output, args.workers)
        ok, reason, _ = check(output, reference, bad)
        ok = ok and done.returncode == 0 and "Traceback" not in err + done.stderr
        reason = reason or ("" if done.returncode == 0 else f"resume exited {done.returncode}: {done.stderr.strip()[-300:]}")
        if "Traceback" in err:
            reason = reason or f"the stopped build printed a traceback: {err.strip()[-300:]}"
        tally.add(ok)
        print(f"kill {trial + 1:3d}: {stop.name:7s} after {delay:5.2f} s (exit {code}, {rows_then:3d} rows committed), resumed: {'exact' if ok else 'NOT EXACT: ' + reason}", flush=True)
    return tally


def chain_trial(args: argparse.Namespace, images: Path, reference: dict[str, Any], bad: set[str], window: tuple[float, float], work: Path) -> Tally:
    """One output killed ``--trials`` times: a quarter of the runs during their start-up, the others
    just after they commit their next shard, so that each kill lands while work remains and the
    build advances about a shard per run."""
    rng = random.Random(args.seed + 2)
    output = work / "chain"
    history = []
    for _ in range(args.trials):
        before = committed(output)
        process = subprocess.Popen(command(images, output, args.workers), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if rng.random() < 0.25:
            time.sleep(rng.uniform(0.0, window[0]))
        else:
            deadline = time.monotonic() + 60
            while committed(output) <= max(before, 0) and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.05))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=120)
        history.append(committed(output))
    done = finish(images, output, args.workers)
    ok, reason, _ = check(output, reference, bad)
    ok = ok and done.returncode == 0
    print(f"chain: {args.trials} SIGKILLs, rows committed after each: {history}; final resume: {'exact' if ok else 'NOT EXACT: ' + (reason or done.stderr[-300:])}", flush=True)
    tally = Tally()
    tally.add(ok)
    return tally


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def worker_trials(args: argparse.Namespace, images: Path, reference: dict[str, Any], bad: set[str], window: tuple[float, float], work: Path) -> Tally:
    rng = random.Random(args.seed + 3)
    tally = Tally()
    for trial in range(args.trials):
        output = work / f"workers-{trial}"
        process = subprocess.Popen(command(images, output, args.workers), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        kills = 0
        time.sleep(window[0])
        for _ in range(rng.randint(1, 3)):
            time.sleep(rng.uniform(0.05, (window[1] - window[0]) / 3))
            if process.poll() is not None:
                break
            workers = children(process.pid)
            if workers:
                os.kill(rng.choice(workers), signal.SIGKILL)
                kills += 1
        code = process.wait(timeout=300)
        err = process.stderr.read() if process.stderr else ""
        ok, reason, crashes = check(output, reference, bad, allowed_crashes=True)
        ok = ok and code == 0
        reason = reason or ("" if code == 0 else f"build exited {code}: {err.strip()[-300:]}")
        noticed = err.count("a worker process died")
        tally.add(ok, crashes)
        print(f"workers {trial + 1:3d}: {kills} worker(s) killed, {noticed} death(s) reported, {crashes} input(s) skipped as killers: {'exact' if ok else 'NOT EXACT: ' + reason}", flush=True)
    return tally


def disk_trials(args: argparse.Namespace, images: Path, reference: dict[str, Any], bad: set[str], data_bytes: int, work: Path) -> Tally | None:
    rng = random.Random(args.seed + 4)
    tally = Tally()
    for trial in range(args.trials):
        mount = work / f"disk-{trial}"
        mount.mkdir()
        size = rng.randint(data_bytes // 1024 // 10, data_bytes // 1024)  # a tenth to all of what the dataset needs
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}k", "tmpfs", str(mount)], capture_output=True).returncode != 0:
            print("disk: cannot mount a tmpfs here (needs root); skipped")
            return None
        try:
            output = mount / "ds"
            first = finish(images, output, args.workers)
            full = first.returncode == 2 and "no space left" in first.stderr
            rows_then = committed(output)
            readable_then = rows_then >= 0
            subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
            done = finish(images, output, args.workers)
            ok, reason, _ = check(output, reference, bad)
            ok = ok and done.returncode == 0 and readable_then and "Traceback" not in first.stderr
            tally.add(ok)
            said = "disk full (one line)" if full else f"exit {first.returncode}"
            print(f"disk {trial + 1:3d}: {size:5d} KiB, {said}, {rows_then:3d} rows committed and readable, resumed: {'exact' if ok else 'NOT EXACT: ' + (reason or done.stderr[-300:])}", flush=True)
        finally:
            subprocess.run(["umount", "-l", str(mount)], check=False)
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("all", "kill", "chain", "workers", "disk"), default="all")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--images", type=int, default=150)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--signals", default="KILL", help="comma-separated, for --mode kill: KILL, INT, TERM")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cn-stress-") as tmp:
        work = Path(tmp)
        images = work / "images"
        good, bad = make_inputs(images, args.images, args.seed)
        started = time.monotonic()
        made = finish(images, work / "reference", args.workers)
        duration = time.monotonic() - started
        if made.returncode != 0:
            sys.exit(f"the reference build failed: {made.stderr}")
        started = time.monotonic()
        finish(images, work / "reference", args.workers)  # nothing left to do: start-up and listing only
        idle = time.monotonic() - started
        reference = contents(work / "reference")
        assert reference.keys() == good, sorted(reference.keys() ^ good)
        data_bytes = sum(path.stat().st_size for path in (work / "reference").rglob("*") if path.is_file())
        window = (0.8 * idle, duration + 0.2)  # signals land from the end of start-up to just past the end
        print(
            f"{len(good)} photos and {len(bad)} broken files, {data_bytes / 2**20:.1f} MiB built; an undisturbed build takes {duration:.2f} s, "
            f"of which {idle:.2f} s start-up; signals land {window[0]:.2f}-{window[1]:.2f} s after the start",
            flush=True,
        )
        results: dict[str, Tally | None] = {}
        modes = ("kill", "chain", "workers", "disk") if args.mode == "all" else (args.mode,)
        for mode in modes:
            if mode == "kill":
                results[mode] = kill_trials(args, images, reference, bad, window, work)
            elif mode == "chain":
                results[mode] = chain_trial(args, images, reference, bad, window, work)
            elif mode == "workers":
                results[mode] = worker_trials(args, images, reference, bad, window, work)
            else:
                results[mode] = disk_trials(args, images, reference, bad, data_bytes, work)
        print("\nsummary")
        failed = False
        for mode, tally in results.items():
            if tally is None:
                print(f"  {mode:8s} skipped")
                continue
            extra = f", {tally.crash_skips} inputs skipped for killing their worker twice" if mode == "workers" else ""
            print(f"  {mode:8s} {tally.exact}/{tally.trials} exact{extra}")
            failed |= tally.exact != tally.trials
        sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
