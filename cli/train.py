"""`cn-train`: train a ControlNet on a cn-annotate dataset, and export it for A1111 / ComfyUI.

    cn-train --base-model runwayml/stable-diffusion-v1-5 --dataset ./canny-dataset -o out --max-steps 20000
    cn-train --base-model stabilityai/stable-diffusion-xl-base-1.0 --dataset ./canny-dataset -o out-xl \\
        --resolution 1024 --mixed-precision bf16 --gradient-checkpointing --cache-latents --cache-text-embeddings
    cn-train ... --resume latest                       continue the run in -o exactly where it stopped
    accelerate launch --num_processes 8 -m cli.train ...   the same run on 8 GPUs (or several nodes)
    cn-train export out/controlnet control_canny.safetensors   one file for A1111 / ComfyUI

The options are generated from :class:`controlnet.training.trainer.TrainConfig`; see ``cn-train --help``.
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from cli.common import fail, quiet_libraries, show_notices
from cli.options import Command, config_parameters, given_values
from controlnet.training.trainer import TrainConfig

#: option names other than the field's own
FLAGS = {
    "output_dir": ("--output-dir", "-o"),
    "train_batch_size": ("--train-batch-size", "--batch-size"),
    "validation_conditions": ("--validation-condition",),
    "validation_prompts": ("--validation-prompt",),
}


def _is_main_process() -> bool:
    """Under accelerate launch / torchrun only the first process shows progress."""
    return os.environ.get("RANK", "0") == "0"


def _stop(progress: Progress) -> None:
    if progress.live.is_started:
        progress.stop()


def run_training(**options: Any) -> None:
    quiet_libraries()
    if _is_main_process():
        show_notices("controlnet")
    from controlnet.training.data import DataError
    from controlnet.training.trainer import TrainError, train

    # The bar appears with the first step, so that a run refused at setup prints only its error.
    progress = Progress(
        TextColumn("[bold]cn-train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
        TimeRemainingColumn(), disable=not _is_main_process(),
    )
    try:
        config = TrainConfig(**given_values(TrainConfig, options))
        task = progress.add_task("", total=config.max_steps)

        def report(step: int, logs: dict[str, float]) -> None:
            progress.start()
            progress.update(task, completed=step, description=f"loss {logs['loss']:.4f}")

        result = train(config, progress=report)
    except (TrainError, DataError, FileNotFoundError, OSError, ValueError) as error:
        _stop(progress)
        fail(str(error).splitlines()[0] if str(error) else type(error).__name__)
    _stop(progress)
    if _is_main_process():
        typer.echo(f"step {result.global_step}: ControlNet saved to {result.controlnet_dir}")


def _train_command() -> Any:
    parameters = config_parameters(TrainConfig, flags=FLAGS)

    def command(**options: Any) -> None:
        run_training(**options)

    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    return command


train_app = typer.Typer(
    add_completion=False,
    help="Train a ControlNet (the paper's recipe) on a cn-annotate dataset, on an SD 1.x/2.x or SDXL base. "
    "`cn-train export --help`: write the trained ControlNet as one file for A1111 / ComfyUI.",
)
train_app.command(name="cn-train", cls=Command)(_train_command())
export_app = typer.Typer(add_completion=False, help="Write a diffusers ControlNet as one .safetensors file for A1111 / ComfyUI.")
Opt = typer.Option


@export_app.command(cls=Command)
def export_command(
    controlnet: Annotated[Path, typer.Argument(help="diffusers ControlNet folder (e.g. out/controlnet)")],
    output: Annotated[Path, typer.Argument(help="the .safetensors file to write")],
    half: Annotated[bool, Opt(help="store float16 weights")] = False,
    layout: Annotated[
        str | None,
        Opt(help="original (control_model.* keys) or diffusers (the model's own keys); default: original for SD 1.x/2.x, diffusers for SDXL"),
    ] = None,
) -> None:
    import torch

    from controlnet.training.export import LayoutError, export_controlnet

    if output.suffix != ".safetensors":
        fail(f"{output}: the export is a .safetensors file")
    try:
        path = export_controlnet(controlnet, output, dtype=torch.float16 if half else None, layout=layout)
    except (LayoutError, OSError, ValueError) as error:
        fail(str(error).splitlines()[0])
    typer.echo(f"wrote {path}")


def main() -> None:
    """``cn-train export ...`` exports; anything else trains."""
    if len(sys.argv) > 1 and sys.argv[1] == "export":
        export_app(args=sys.argv[2:], prog_name="cn-train export")
    else:
        train_app(args=sys.argv[1:], prog_name="cn-train")


if __name__ == "__main__":
    main()
