"""The Ray engine (``--engine ray``) against the local engine, on a local Ray with 2 CPUs started
once for the module: the same dataset, resume after the driver is killed, a killed worker or
actor, bad files, a two-node cluster, remote (URL) inputs, and the message without Ray."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import annotators
from annotators.neural import NeuralConfig
from controlnet.dataset.build import BuildConfig, BuildError, build, shard_paths
from controlnet.dataset.engines.ray import _on_device, plan
from controlnet.dataset.sources import SourceItem
from tests.controlnet.dataset.ray_helpers import FATAL_WIDTH, GATED_WIDTH, Broken, OnCuda, Probe
from tests.controlnet.helpers import write_bad_files, write_photo

REPO = Path(__file__).resolve().parents[3]
#: Ray Data copies its context with deprecated fields of its own; nothing of ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")
#: build options of every test: small shards and pieces, so that a few images make several of each
OPTIONS: dict[str, Any] = {"keep_size": True, "shard_size": 4, "batch_size": 2, "max_pixels": 100_000}


def config(source: Path | str, output: Path, name: str = "canny", **options: Any) -> BuildConfig:
    params = {key: options.pop(key) for key in ("gate", "die_once") if key in options}
    return BuildConfig(input=str(source), output=output, annotators=((name, annotators.get_class(name).Config(**params)),), **OPTIONS, **options)


def stored(output: Path) -> list[dict[str, Any]]:
    return [row for path in shard_paths(output) for row in pq.read_table(path).to_pylist()]


def skipped(output: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (output / "skipped.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ray_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Ray's settings for every cluster, node and driver of these tests: token authentication (as
    Ray 2.60 sets up by default) with a token of the tests' own, and no usage reports."""
    token = tmp_path_factory.mktemp("ray-token") / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def ray_address(ray_env: dict[str, str]) -> Iterator[str]:
    """A local Ray with 2 CPUs, as in CI, shared by the module's tests (starting one takes seconds)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def probe() -> Iterator[None]:
    annotators.register(Probe.name, Probe)  # the engine takes the class to the workers
    yield
    annotators.unregister(Probe.name)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """19 inputs in 5 shards of 4: photos 64 pixels wide (one of them FATAL_WIDTH), the broken
    files of every kind, then photos GATED_WIDTH wide. Shard 2 is all broken files (no file)."""
    folder = tmp_path_factory.mktemp("ray") / "images"
    for i in range(6):
        write_photo(folder / f"a{i}.jpg", i, FATAL_WIDTH if i == 2 else 64, 48)
    write_bad_files(folder / "b-bad")
    for i in range(6):
        write_photo(folder / f"c{i}.jpg", i + 6, GATED_WIDTH, 48)
    return folder


@pytest.fixture(scope="module")
def references(inputs: Path, probe: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The datasets the local engine builds from the inputs, with canny and with the probe."""
    root = tmp_path_factory.mktemp("local")
    for name in ("canny", Probe.name):
        build(config(inputs, root / name, name, workers=1))
    return {"canny": root / "canny", Probe.name: root / Probe.name}


def assert_same_dataset(output: Path, reference: Path) -> None:
    """The same rows, bytes and order as the reference, the same skips, identity and card."""
    assert stored(output) == stored(reference)
    assert skipped(output) == skipped(reference)
    assert (output / "build.json").read_text() == (reference / "build.json").read_text()
    # The shards are cut differently where inputs are skipped; the usage snippet names each folder.
    sizes = ("num_bytes:", "download_size:", "dataset = load_dataset(")
    card = [line for line in (output / "README.md").read_text().splitlines() if not line.strip().startswith(sizes)]
    assert card == [line for line in (reference / "README.md").read_text().splitlines() if not line.strip().startswith(sizes)]
    assert not [path.name for path in (output / "data").iterdir() if path.name.startswith(".")]


@pytest.mark.parametrize("path", ["tasks", "actors"])
def test_same_dataset_as_the_local_engine_with_bad_files(path: str, ray_address: str, inputs: Path, references: dict[str, Path], tmp_path: Path) -> None:
    import datasets

    output = tmp_path / "ds"
    result = build(config(inputs, output, engine="ray", central=path == "actors"))

    reference = references["canny"]
    assert (result.rows, result.skipped) == (12, 7)
    assert result.skip_kinds == {"corrupt": 2, "empty": 1, "not an image": 2, "too large": 1, "unreadable": 1}
    assert_same_dataset(output, reference)
    # shards hold the inputs at fixed positions: the all-skipped shard 2 has no file
    assert [p.name for p in shard_paths(output)] == ["train-00000.parquet", "train-00001.parquet", "train-00003.parquet", "train-00004.parquet"]
    assert shard_paths(output)[0].read_bytes() == shard_paths(reference)[0].read_bytes()  # same rows: the same file
    loaded = [datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache")) for out in (output, reference)]
    assert loaded[0].data.table.equals(loaded[1].data.table)


def _write_driver(output: Path, inputs: Path, ray_address: str, gate: Path) -> list[str]:
    """A driver process building with the probe, whose gated images wait for ``gate``."""
    script = (
        "import annotators, sys; from pathlib import Path\n"
        "from controlnet.dataset.build import build\n"
        "from tests.controlnet.dataset.ray_helpers import Probe\n"
        "from tests.controlnet.dataset.test_ray import config\n"
        "annotators.register(Probe.name, Probe)\n"
        f"build(config({str(inputs)!r}, Path({str(output)!r}), Probe.name, engine='ray', ray_address={ray_address!r}, gate={str(gate)!r}))\n"
    )
    return [sys.executable, "-c", script]


@pytest.mark.timeout(180)
def test_resume_after_the_driver_is_killed(ray_address: str, inputs: Path, references: dict[str, Path], tmp_path: Path) -> None:
    output, gate = tmp_path / "ds", tmp_path / "gate"
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # with ray_env's token
    driver = subprocess.Popen(_write_driver(output, inputs, ray_address, gate), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        # shards 0 to 2 finish; 3 and 4 wait at their gated images until the driver is killed
        while not (len(shard_paths(output)) == 2 and (output / "skipped.jsonl").is_file() and len(skipped(output)) == 6):
            assert driver.poll() is None, driver.stderr.read().decode() if driver.stderr else ""
            assert time.monotonic() < deadline, "the first shards were not written in time"
            time.sleep(0.1)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    finished = {path.name: path.read_bytes() for path in shard_paths(output)}
    assert sorted(finished) == ["train-00000.parquet", "train-00001.parquet"]

    gate.touch()
    result = build(config(inputs, output, Probe.name, engine="ray", gate=str(gate)))

    assert (result.rows_added, result.skipped_added) == (6, 1)  # the gated photos, and shard 3's broken file
    assert_same_dataset(output, references[Probe.name])
    assert all(path.read_bytes() == finished[path.name] for path in shard_paths(output) if path.name in finished)


@pytest.mark.parametrize("path", ["tasks", "actors"])
def test_a_killed_worker_or_actor_is_retried_with_one_row_per_input(path: str, ray_address: str, inputs: Path, references: dict[str, Path], tmp_path: Path) -> None:
    marker = tmp_path / "died"
    result = build(config(inputs, tmp_path / "ds", Probe.name, engine="ray", central=path == "actors", die_once=str(marker)))
    assert marker.exists()  # the process annotating the FATAL_WIDTH photo was killed
    assert (result.rows, result.skipped) == (12, 7)
    assert_same_dataset(tmp_path / "ds", references[Probe.name])


@pytest.mark.parametrize("path", ["tasks", "actors"])
def test_an_annotator_that_cannot_load_stops_the_build_with_one_line(path: str, ray_address: str, inputs: Path, tmp_path: Path, registered) -> None:
    registered(Broken.name, Broken)
    with pytest.raises(BuildError, match=r"^ray_broken: cannot load: the weights are corrupt$"):
        build(config(inputs, tmp_path / "ds", Broken.name, engine="ray", central=path == "actors"))


def test_an_annotator_on_a_gpu_needs_gpus_in_the_cluster(ray_address: str, inputs: Path, tmp_path: Path, registered) -> None:
    """Chosen by the contract's ``device``, not by class: the actor pool asks the cluster for GPUs."""
    registered(OnCuda.name, OnCuda)
    with pytest.raises(BuildError, match=r"run on CUDA but the Ray cluster has 0 GPUs"):
        build(config(inputs, tmp_path / "ds", OnCuda.name, engine="ray"))
    assert _on_device(NeuralConfig(device="cuda:1")) == NeuralConfig(device="cuda")  # Ray gives an actor its GPUs
    assert _on_device(NeuralConfig(device="mps")) == NeuralConfig(device="mps")


def _free_port() -> int:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return probe_socket.getsockname()[1]


def _start_node(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """``ray start --block ...``, returned once the node runs (its raylet registered)."""
    ray_cli = Path(sys.executable).with_name("ray")
    node = subprocess.Popen([str(ray_cli), "start", "--block", "--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert node.stdout is not None
    log = []
    for line in node.stdout:  # --block prints this once the node is up, then stays quiet
        log.append(line)
        if "block forever" in line:
            return node
    node.wait()
    raise AssertionError("ray start failed:\n" + "".join(log))


@pytest.mark.timeout(240)
def test_two_nodes_build_one_dataset(ray_env: dict[str, str], inputs: Path, references: dict[str, Path], tmp_path: Path) -> None:
    """A head and a worker node, each a separate ``ray start`` process with one CPU, and the CLI
    joining them with --ray-address: both nodes annotate, and the dataset is the local one."""
    pytest.importorskip("ray")
    env = {**os.environ, **ray_env, "PYTHONPATH": str(REPO)}
    port = _free_port()
    nodes: list[subprocess.Popen[str]] = []
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths live under it
    try:
        nodes.append(_start_node(["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp_dir}"], env))
        nodes.append(_start_node([f"--address=127.0.0.1:{port}"], env))
        output = tmp_path / "ds"
        command = [sys.executable, "-m", "cli.annotate", "canny", str(inputs), "-o", str(output), "--engine", "ray", "--ray-address", f"127.0.0.1:{port}"]
        command += ["--keep-size", "--shard-size", "4", "--batch-size", "2", "--max-pixels", "100000"]
        done = subprocess.run(command, cwd=REPO, env={**env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=180, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "ray, 2 nodes" in done.stdout
        assert_same_dataset(output, references["canny"])
    finally:
        for node in reversed(nodes):  # SIGTERM: `ray start --block` stops the processes it started
            node.terminate()
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node.kill()
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)


def test_url_inputs_are_read_by_the_tasks(ray_address: str, inputs: Path, references: dict[str, Path], tmp_path: Path) -> None:
    """``file://`` goes through the same pyarrow filesystem calls as ``s3://`` or ``gs://``."""
    result = build(config(inputs.as_uri(), tmp_path / "ds", engine="ray"))
    assert (result.rows, result.skipped) == (12, 6)  # a listing holds no dangling link (bad/unreadable.jpg)
    assert stored(tmp_path / "ds") == stored(references["canny"])
    expected = [record for record in skipped(references["canny"]) if record["file_name"] != "b-bad/unreadable.jpg"]
    assert skipped(tmp_path / "ds") == expected  # named relative to the input, with no path, as locally


def test_without_ray_the_engine_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    write_photo(tmp_path / "images" / "a.jpg", 0)
    with pytest.raises(BuildError, match=r"^--engine ray needs Ray, which is not installed: pip install 'cn-annotate\[ray\]'$"):
        build(config(tmp_path / "images", tmp_path / "ds", engine="ray"))
    assert not (tmp_path / "ds").exists()


def test_shards_are_fixed_by_position_and_never_overwritten() -> None:
    items = [SourceItem(f"{i:02d}.jpg", "") for i in range(10)]
    names = lambda shards: [(index, [item.file_name for item in chunk]) for index, chunk in shards]
    assert names(plan(enumerate(items), 4, set())) == [(0, ["00.jpg", "01.jpg", "02.jpg", "03.jpg"]), (1, ["04.jpg", "05.jpg", "06.jpg", "07.jpg"]), (2, ["08.jpg", "09.jpg"])]
    # resumed: shard 1 was written, shard 0 partly done (its other inputs were skipped)
    pending = [(i, item) for i, item in enumerate(items) if i not in (0, 1, 4, 5, 6, 7)]
    assert names(plan(pending, 4, {1})) == [(0, ["02.jpg", "03.jpg"]), (2, ["08.jpg", "09.jpg"])]
    # another shard size (or inputs added) before: pending inputs whose shard number is taken go after all others
    assert names(plan(enumerate(items), 3, {0, 2})) == [(1, ["03.jpg", "04.jpg", "05.jpg"]), (3, ["09.jpg"]), (4, ["00.jpg", "01.jpg", "02.jpg"]), (5, ["06.jpg", "07.jpg", "08.jpg"])]
