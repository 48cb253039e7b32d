"""Writes this folder's fixture by running ControlNet v1.1's ZoeDepth annotator on seeded weights.

Not part of the test suite: it needs a checkout of lllyasviel/ControlNet-v1-1-nightly (the commit in
``manifest.json``) and timm 0.6.13 (the release ZoeDepth's vendored MiDaS imports; with a stand-in
for torchvision, whose few tensor ops this path uses), in a scratch environment:

    python tests/data/zoe_v11/make_fixture.py /path/to/ControlNet-v1-1-nightly [COMMIT]

(COMMIT: the checkout's commit, when it is an export rather than a git work tree.)

It builds ``ZoeDepth.build_from_config(get_config("zoedepth", "infer"))``, fills its state dict with
the parity README's seeded rule (seed 0, state-dict order; the constant buffers take no draw), loads
it as v1.1 does (``load_state_dict(torch.load(path)['model'])``), and runs ``ZoeDetector.__call__``'s
steps on one CPU thread: ``model.infer`` (padding and flip augmentation) and the percentile map.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from tests.parity import seeded_arrays  # noqa: E402


def main(upstream: Path, commit: str = "") -> None:
    torch.set_num_threads(1)
    sys.path.insert(0, str(upstream))
    from annotator.zoe.zoedepth.models.zoedepth.zoedepth_v1 import ZoeDepth
    from annotator.zoe.zoedepth.utils.config import get_config
    from skimage import data

    model = ZoeDepth.build_from_config(get_config("zoedepth", "infer"))
    own = model.state_dict()
    # Buffers the model computes (int64 indices, and the log-binomial's K - 1) keep their values.
    constants = [k for k, v in own.items() if not v.is_floating_point() or k.endswith("K_minus_1")]
    keys = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in own.items()]
    arrays = seeded_arrays({"seed": 0, "keys": [row for row in keys if row[0] not in constants]})
    state = {k: own[k].clone() if k in constants else torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in own}
    model.load_state_dict(state)  # strict, as v1.1 loads ['model']
    model.eval()

    image = np.ascontiguousarray(data.astronaut()[100:228, 150:342])
    with torch.no_grad():  # ZoeDetector.__call__, on the CPU
        x = torch.from_numpy(image).float() / 255.0
        x = x.permute(2, 0, 1)[None]  # the reference's rearrange('h w c -> 1 c h w')
        depth = model.infer(x)[0, 0].numpy()
        infer_depth = depth.copy()
        vmin, vmax = np.percentile(depth, 2), np.percentile(depth, 85)
        depth -= vmin
        depth /= vmax - vmin
        depth = 1.0 - depth
        final_map = (depth * 255.0).clip(0, 255).astype(np.uint8)
        # A separate hooked pass for the relative depth of the unflipped image: hooks change the
        # memory layout, which is enough to move near-tied bins of the seeded metric head.
        captured: dict[str, torch.Tensor] = {}

        def keep(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            captured.setdefault("rel", output.clone())

        model.core.core.register_forward_hook(keep)
        model.infer(x)
    rel = captured["rel"][0].numpy()
    np.savez_compressed(
        HERE / "golden.npz",
        input=image,
        rel_depth_every4=rel[::4, ::4],
        rel_depth_shape=np.array(rel.shape),
        infer_depth=infer_depth,
        percentiles=np.array([vmin, vmax]),
        final_map=final_map,
    )
    commit = commit or subprocess.run(["git", "-C", str(upstream), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    manifest = {
        "source": f"lllyasviel/ControlNet-v1-1-nightly@{commit}:annotator/zoe",
        "model_class": 'ZoeDepth.build_from_config(get_config("zoedepth", "infer")), timm 0.6.13',
        "checkpoint_file": "ZoeD_M12_N.pt",
        "container": "['model']",
        "seed": 0,
        "constants": constants,
        "keys": keys,
        "input": "skimage.data.astronaut()[100:228, 150:342]",
        "torch": torch.__version__,
        "torch_num_threads": 1,
    }
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=0) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:3])
