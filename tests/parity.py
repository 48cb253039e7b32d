"""Access to the reference fixtures in ``shared/parity`` and the tolerances its README suggests.

The seeded weights are rebuilt from each case's manifest with the README's rule, written as a
checkpoint in the published key layout, and then loaded through the same path users take.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tests import tiny_segmenters
from tests.seeded_depth import WRITERS as DEPTH_WRITERS

if TYPE_CHECKING:
    from annotators.weights import Weights

REPO_ROOT = Path(__file__).resolve().parents[1]


def parity_root() -> Path:
    """``$CN_PARITY_DIR``, else ``shared/parity`` beside the repository (as CI checks it out)."""
    root = Path(os.environ.get("CN_PARITY_DIR", REPO_ROOT.parent / "shared" / "parity"))
    if not (root / "index.json").is_file():
        raise FileNotFoundError(f"parity fixtures not found at {root}; set CN_PARITY_DIR")
    return root


@dataclass
class Case:
    name: str
    path: Path

    @cached_property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / "manifest.json").read_text())

    @cached_property
    def golden(self) -> dict[str, np.ndarray]:
        with np.load(self.path / "golden.npz") as data:
            return {k: data[k] for k in data.files}

    @cached_property
    def input_rgb(self) -> np.ndarray:
        from annotators.image import load_image

        return load_image(self.path / "input.png")

    @cached_property
    def index(self) -> dict[str, Any]:
        """The case's entry in ``index.json`` (files, arrays, checkpoint names)."""
        return json.loads((self.path.parent / "index.json").read_text())["cases"][self.name]

    @cached_property
    def checksums(self) -> list[list[Any]]:
        return json.loads((self.path / "seeded_checksums.json").read_text())["rows"]


def case(name: str) -> Case:
    path = parity_root() / name
    if not path.is_dir():
        raise FileNotFoundError(f"no parity case {name!r} in {parity_root()}")
    return Case(name, path)


def relative_position_index(window: int) -> np.ndarray:
    """Swin's window relative-position index (``window``² x ``window``², int64): for window positions
    i, j in row-major order, ``(dy + w - 1) * (2w - 1) + (dx + w - 1)`` with dy, dx = i - j."""
    ys, xs = np.divmod(np.arange(window * window), window)
    dy = ys[:, None] - ys[None, :]
    dx = xs[:, None] - xs[None, :]
    return ((dy + window - 1) * (2 * window - 1) + (dx + window - 1)).astype(np.int64)


def seeded_arrays(manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    """The README's seeded weights, in the manifest's (model ``state_dict``) key order. The
    manifest's ``non_float_buffers`` (Swin relative-position indices) take no draw and keep the
    values the model computes."""
    rng = np.random.default_rng(manifest["seed"])
    computed = set(manifest.get("non_float_buffers", {}).get("keys", ()))
    out: dict[str, np.ndarray] = {}
    for key, shape, dtype in manifest["keys"]:
        shape = tuple(shape)
        if key in computed:
            assert key.endswith("relative_position_index") and len(shape) == 2 and shape[0] == shape[1], key
            value = relative_position_index(math.isqrt(shape[0]))
        elif key.endswith("num_batches_tracked"):
            value = np.zeros(shape, np.int64)
        elif key.endswith("running_mean"):
            value = 0.1 * rng.standard_normal(shape)
        elif key.endswith("running_var"):
            value = 1.0 + 0.1 * np.abs(rng.standard_normal(shape))
        elif len(shape) >= 2 and key.endswith("weight"):
            value = rng.standard_normal(shape) * math.sqrt(2.0 / math.prod(shape[1:]))
        elif len(shape) >= 2:
            value = 0.02 * rng.standard_normal(shape)
        elif key.endswith("weight"):
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            value = 0.1 * rng.standard_normal(shape)
        out[key] = np.asarray(value).astype(dtype)
    return out


def check_seeded(c: Case, arrays: dict[str, np.ndarray]) -> None:
    """Compare the rebuilt weights with the case's ``seeded_checksums.json``."""
    for (key, total, total_abs, first, last), (name, value) in zip(c.checksums, arrays.items(), strict=True):
        assert key == name, (key, name)
        flat = value.reshape(-1).astype(np.float64)
        if flat.size:
            np.testing.assert_allclose([flat.sum(), np.abs(flat).sum()], [total, total_abs], rtol=1e-9, atol=1e-9, err_msg=key)
            assert flat[0] == first and flat[-1] == last, key


def write_published_checkpoint(c: Case, path: Path) -> Path:
    """Write the seeded weights under the published checkpoint's key names and container, or, for
    a graph the case stores itself (DWPose's stand-in ONNX files), copy that file."""
    if path.name in c.index.get("weights_stored", ()):
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(c.path / path.name, path)
        return path
    import torch

    arrays = seeded_arrays(c.manifest)
    check_seeded(c, arrays)
    names = [k for k, _ in c.manifest["checkpoint_keys"]] if "checkpoint_keys" in c.manifest else list(arrays)
    state = {name: torch.from_numpy(np.ascontiguousarray(v)) for name, v in zip(names, arrays.values(), strict=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":  # a flat dict, as safetensors stores it
        from safetensors.torch import save_file

        save_file(state, str(path))
        return path
    container = next((m.get("container", "") for m in c.manifest.get("checkpoint_key_map", []) if "container" in m), "")
    if "['state_dict']" in container:
        state = {"state_dict": state}
    elif "['model']" in container:
        state = {"model": state}
    torch.save(state, path)
    return path


# Tolerances from the parity README.
def assert_raw_close(actual: np.ndarray, golden: np.ndarray, name: str = "") -> None:
    """Raw float outputs (logits, heatmaps, depth): |a-g| <= 1e-4*max|g| + 1e-5."""
    actual = np.asarray(actual, np.float64)
    golden = np.asarray(golden, np.float64)
    assert actual.shape == golden.shape, (name, actual.shape, golden.shape)
    bound = 1e-4 * np.abs(golden).max() + 1e-5
    worst = np.abs(actual - golden).max()
    assert worst <= bound, f"{name}: max |diff| {worst:.3g} > {bound:.3g}"


def assert_sigmoid_close(actual: np.ndarray, golden: np.ndarray, name: str = "") -> None:
    """Sigmoid/tanh-domain outputs: atol 1e-3."""
    assert actual.shape == golden.shape, (name, actual.shape, golden.shape)
    worst = np.abs(np.asarray(actual, np.float64) - golden).max()
    assert worst <= 1e-3, f"{name}: max |diff| {worst:.3g} > 1e-3"


def assert_f16_close(actual: np.ndarray, golden_f16: np.ndarray, name: str = "") -> None:
    """float16 references: compared in float32 with atol 2e-3*max|g|."""
    golden = golden_f16.astype(np.float32)
    assert actual.shape == golden.shape, (name, actual.shape, golden.shape)
    bound = 2e-3 * np.abs(golden).max()
    worst = np.abs(np.asarray(actual, np.float32) - golden).max()
    assert worst <= bound, f"{name}: max |diff| {worst:.3g} > {bound:.3g}"


def assert_maps_agree(actual: np.ndarray, golden: np.ndarray, min_fraction: float = 0.995, name: str = "") -> float:
    """Final uint8 maps: at least ``min_fraction`` of the pixels identical. Returns the fraction."""
    assert actual.shape == golden.shape, (name, actual.shape, golden.shape)
    assert actual.dtype == golden.dtype == np.uint8, (name, actual.dtype)
    fraction = float((actual == golden).mean())
    assert fraction >= min_fraction, f"{name}: {fraction:.5%} identical pixels < {min_fraction:.3%}"
    return fraction


def checkpoint_cases() -> dict[str, str]:
    """Published checkpoint file name -> the parity case whose seeded weights stand in for it."""
    index = json.loads((parity_root() / "index.json").read_text())["cases"]
    files = {}
    for name, info in index.items():
        checkpoint = info.get("checkpoint_file")
        # One file, or several for a pipeline of models (DWPose's detector and pose ONNX graphs).
        for filename in [checkpoint] if isinstance(checkpoint, str) else checkpoint or []:
            files[filename] = name
    files["sk_model2.pth"] = "lineart"  # the coarse model shares the lineart manifest and seed
    return files


# Seeded weights make the OpenPose body net "see" a dozen people even in tiny crops, and each of
# their hands costs seconds per scale on one CPU thread; one hand scale keeps tests fast. The
# segmenters rescale every image to a 512-800 px short side; a small one keeps the networks quick.
FAST_PARAMS: dict[str, dict[str, object]] = {
    "openpose_hand": {"hand_scales": 1},
    "seg_ufade20k": {"resolution": 64},
    "seg_ofade20k": {"resolution": 64},
    "seg_ofcoco": {"resolution": 64},
    # Depth Anything runs every image at >= 518 px: the registry runs a tiny transformers stand-in.
    "depth_anything_v2": {"encoder": "vits", "weights_format": "transformers"},
    "depth_anything": {"encoder": "vits", "weights_format": "transformers"},
    "depth_zoe": {"weights_format": "transformers"},  # BEiT-L at 384x512, twice: a tiny stand-in
}

#: Annotators whose full seeded checkpoint is too large for tests that do not check parity (a
#: 900 MB Swin-L OneFormer takes seconds per load): annotator id -> the transformers model id of a
#: tiny seeded stand-in (in ``SEEDED_WRITERS``) that the annotator's loader accepts as well. Their
#: parity tests use the full seeded checkpoints.
FAST_WEIGHTS: dict[str, str] = {
    "seg_ofade20k": "shi-labs/oneformer_ade20k_swin_large",
    "seg_ofcoco": "shi-labs/oneformer_coco_swin_large",
}


def _conv(name: str, out: int, inp: int, k: int) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return (f"{name}.weight", (out, inp, k, k)), (f"{name}.bias", (out,))


def _transposed(name: str, inp: int, out: int, k: int) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return (f"{name}.weight", (inp, out, k, k)), (f"{name}.bias", (out,))  # ConvTranspose2d: [in, out, k, k]


# TEED's published checkpoint (7_model.pth, a bare state dict of the authors' TED module), written from
# the architecture in the authors' names and state_dict order, independently of our module.
TEED_CHECKPOINT_KEYS: tuple[tuple[str, tuple[int, ...]], ...] = (
    *_conv("block_1.conv1", 16, 3, 3), *_conv("block_1.conv2", 16, 16, 3),
    *_conv("block_2.conv1", 32, 16, 3), *_conv("block_2.conv2", 32, 32, 3),
    *_conv("dblock_3.denselayer1.conv1", 48, 32, 3), *_conv("dblock_3.denselayer1.conv2", 48, 48, 3),
    *_conv("side_1.conv", 32, 16, 1), *_conv("pre_dense_3.conv", 48, 32, 1),
    *_conv("up_block_1.features.0", 1, 16, 1), *_transposed("up_block_1.features.2", 1, 1, 2),
    *_conv("up_block_2.features.0", 1, 32, 1), *_transposed("up_block_2.features.2", 1, 1, 2),
    *_conv("up_block_3.features.0", 16, 48, 1), *_transposed("up_block_3.features.2", 16, 16, 4),
    *_conv("up_block_3.features.3", 1, 16, 1), *_transposed("up_block_3.features.5", 1, 1, 4),
    *_conv("block_cat.DWconv1", 24, 1, 3), *_conv("block_cat.DWconv2", 24, 1, 3),
)  # fmt: skip


def write_seeded_state_dict(keys: tuple[tuple[str, tuple[int, ...]], ...], path: Path) -> Path:
    """The README's seeded rule (seed 0) over ``keys``, saved as a bare torch state dict."""
    import torch

    arrays = seeded_arrays({"seed": 0, "keys": [[key, list(shape), "float32"] for key, shape in keys]})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in arrays.items()}, path)
    return path


#: Seeded stand-ins for weights that no parity case covers: a published file name (or a transformers
#: model id) -> a function writing random weights of the right layout at the given path (a file, or
#: a model folder). A new annotator adds its entry here, so the registry-wide tests cover it.
SEEDED_WRITERS: dict[str, Callable[[Path], object]] = {
    "7_model.pth": lambda path: write_seeded_state_dict(TEED_CHECKPOINT_KEYS, path),
    "openmmlab/upernet-convnext-small": tiny_segmenters.write_tiny_upernet,
    "nvidia/segformer-b0-finetuned-ade-512-512": tiny_segmenters.write_tiny_segformer,
    "facebook/mask2former-swin-large-ade-semantic": tiny_segmenters.write_tiny_mask2former,
    "shi-labs/oneformer_ade20k_swin_large": tiny_segmenters.write_tiny_oneformer_ade20k,
    "shi-labs/oneformer_coco_swin_large": tiny_segmenters.write_tiny_oneformer_coco,
    **DEPTH_WRITERS,
}


class SeededWeights:
    """A folder of seeded checkpoints under their published names, written on demand."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._cases = checkpoint_cases()

    def ensure(self, filenames: tuple[str, ...] | list[str]) -> Path:
        for filename in filenames:
            target = self.folder / filename
            # A parity case may hold the .safetensors copy of a declared .pth (the lookup takes either).
            twin = target.with_suffix(".safetensors") if target.suffix in (".pth", ".pt") else target
            if target.exists() or twin.exists():
                continue
            if filename in SEEDED_WRITERS:
                SEEDED_WRITERS[filename](target)
            elif filename in self._cases:
                write_published_checkpoint(case(self._cases[filename]), target)
            elif twin.name in self._cases:
                write_published_checkpoint(case(self._cases[twin.name]), twin)
            else:
                raise KeyError(f"no parity case or seeded writer provides weights for {filename}")
        return self.folder

    def location(self, weights: Weights) -> Path:
        """A folder holding seeded stand-ins for every file (or the model folder) ``weights`` declares."""
        if weights.format == "transformers":
            assert weights.model_id is not None
            self.ensure([weights.model_id])
            return self.folder / weights.model_id
        return self.ensure([f.name for f in weights.files])

    def create(self, name: str, **params: Any) -> Any:
        """The registered annotator ``name`` with ``params``, on these weights where it needs them
        (the tiny stand-ins of :data:`FAST_WEIGHTS` where listed), at the test-speed parameters of
        :data:`FAST_PARAMS` unless ``params`` say otherwise."""
        import annotators

        cls = annotators.get_class(name)
        params = {**FAST_PARAMS.get(name, {}), **params}
        if name in FAST_WEIGHTS:
            params.setdefault("weights", str(self.ensure([FAST_WEIGHTS[name]]) / FAST_WEIGHTS[name]))
        else:
            # The instance's weights: which files it loads may depend on its parameters (e.g. a size).
            weights = cls(**{k: v for k, v in params.items() if k != "weights"}).weights
            if weights is not None and weights.downloadable:
                params.setdefault("weights", str(self.location(weights)))
        return cls(**params)
