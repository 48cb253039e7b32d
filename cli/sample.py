"""`cn-sample`: see what a ControlNet learned, on an SD 1.x/2.x or SDXL base.

    cn-sample --base-model sd15 --controlnet out/controlnet --image edges.png --prompt "a house"
    cn-sample --base-model sd15 --controlnet canny_cn --annotator canny --image photo.jpg --batch 4
    cn-sample --base-model sd15 --controlnet a --scale 1.0 --image a.png --controlnet b --scale 0.5 --image b.png
    cn-sample --base-model sd15 --controlnet out/controlnet --dataset ./ds --split train --limit 100 -o samples

Repeating ``--controlnet`` builds a MultiControlNet; ``--scale``, ``--image`` and ``--annotator``
pair with the ControlNets in order (a single value applies to all; ``--annotator none`` skips one).
With ``--dataset`` the conditions and captions of the dataset's rows are sampled instead of images
(``--annotator`` then picks the dataset annotator's condition column), one sample file per row named
after its ``file_name``; ``cn-eval`` then scores them. Every run writes ``manifest.jsonl``.
The options are generated from :class:`controlnet.sample.SampleConfig` and ``ControlNetSpec``.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, TypeVar

import typer

from cli.common import fail, quiet_libraries
from cli.options import Command, config_parameters, given_values
from controlnet.sample import ControlNetSpec, SampleConfig

T = TypeVar("T")

#: option names other than the field's own
FLAGS = {"output_dir": ("--output-dir", "-o"), "images": ("--image",), "path": ("--controlnet",)}


def _per_controlnet(values: list[T], count: int, name: str, default: T) -> list[T]:
    if not values:
        return [default] * count
    if len(values) == 1:
        return values * count
    if len(values) != count:
        fail(f"give one {name}, or one per --controlnet ({count}); got {len(values)}")
    return values


def _specs(options: dict[str, Any]) -> list[ControlNetSpec]:
    """One spec per ``--controlnet``, with the other ControlNet options paired in order."""
    import annotators

    paths = options["path"]
    count = len(paths)
    defaults = {f.name: f.default for f in dataclasses.fields(ControlNetSpec)}
    scales = _per_controlnet(list(options["scale"] or []), count, "--scale", defaults["scale"])
    names = [None if a == "none" else a for a in _per_controlnet(list(options["annotator"] or []), count, "--annotator", "none")]
    for name in names:
        if name is not None and name not in annotators.names():
            fail(str(annotators.UnknownAnnotatorError(name)))
    only_mid = bool(options["only_mid_control"])
    return [ControlNetSpec(p, s, a, only_mid) for p, s, a in zip(paths, scales, names)]


def run_sampling(**options: Any) -> None:
    quiet_libraries()
    from controlnet.sample import SampleError, sample

    specs = _specs(options)
    try:
        config = SampleConfig(controlnets=specs, **given_values(SampleConfig, options))
        result = sample(config)
    except (SampleError, FileNotFoundError, OSError, ValueError) as error:
        fail(str(error).splitlines()[0] if str(error) else type(error).__name__)
    grid = " and grid.png" if result.grid_path else ""
    typer.echo(f"wrote {len(result.paths)} samples, manifest.jsonl{grid} to {config.output_dir}")


def _sample_command() -> Any:
    repeated = {"path", "scale", "annotator"}
    parameters = config_parameters(ControlNetSpec, flags=FLAGS, repeated=True, exclude={"only_mid_control"})
    parameters += config_parameters(ControlNetSpec, exclude=repeated)  # one switch for all ControlNets
    parameters += config_parameters(SampleConfig, flags=FLAGS)

    def command(**options: Any) -> None:
        run_sampling(**options)

    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    return command


app = typer.Typer(add_completion=False, help="Sample Stable Diffusion (SD 1.x/2.x or SDXL) with one or more ControlNets.")
app.command(name="cn-sample", cls=Command)(_sample_command())


def main() -> None:
    app(prog_name="cn-sample")


if __name__ == "__main__":
    main()
