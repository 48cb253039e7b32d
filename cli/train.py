"""`cn-train`: train a ControlNet on a cn-annotate dataset, and export it for A1111 / ComfyUI.

    cn-train --base-model runwayml/stable-diffusion-v1-5 --dataset ./canny-dataset -o out --max-steps 20000
    cn-train ... --resume latest                       continue the run in -o exactly where it stopped
    accelerate launch --num_processes 8 -m cli.train ...   the same run on 8 GPUs (or several nodes)
    cn-train export out/controlnet control_canny.safetensors   one file, original control_model.* keys

Options mirror :class:`controlnet.train.TrainConfig`; see ``cn-train --help``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from cli.common import fail


def _is_main_process() -> bool:
    """Under accelerate launch / torchrun only the first process shows progress."""
    return os.environ.get("RANK", "0") == "0"


train_app = typer.Typer(add_completion=False, help="Train a ControlNet (the paper's recipe) on a cn-annotate dataset.")
export_app = typer.Typer(add_completion=False, help="Write a diffusers ControlNet as one original-layout .safetensors.")

Opt = typer.Option


@train_app.command()
def train_command(
    base_model: Annotated[str, Opt("--base-model", help="diffusers SD 1.x/2.x folder or Hub id")],
    dataset: Annotated[str, Opt("--dataset", help="cn-annotate dataset folder or Hub id")],
    output_dir: Annotated[Path, Opt("--output-dir", "-o", help="run folder: checkpoints, logs, controlnet/")] = Path("controlnet-out"),
    revision: Annotated[str | None, Opt(help="base model revision")] = None,
    variant: Annotated[str | None, Opt(help="base model weights variant, e.g. fp16")] = None,
    init_controlnet: Annotated[str | None, Opt(help="start from this ControlNet instead of the UNet encoder")] = None,
    controlnet_init: Annotated[str, Opt(help="a new ControlNet's zero convolutions: zero (the paper) or gaussian (its ablation)")] = "zero",
    split: Annotated[str, Opt(help="dataset split")] = "train",
    dataset_revision: Annotated[str | None, Opt(help="dataset revision (Hub)")] = None,
    image_column: Annotated[str, Opt(help="target image column")] = "image",
    conditioning_column: Annotated[str, Opt(help="condition map column")] = "conditioning_image",
    caption_column: Annotated[str, Opt(help="prompt column")] = "text",
    streaming: Annotated[bool, Opt(help="stream the dataset (larger than RAM)")] = False,
    shuffle_buffer: Annotated[int, Opt(help="shuffle buffer when streaming")] = 1000,
    resolution: Annotated[int, Opt(help="train size: shorter side resized, then square crop")] = 512,
    random_crop: Annotated[bool, Opt(help="random instead of center crop")] = False,
    random_flip: Annotated[bool, Opt(help="flip image and condition together, half the time")] = False,
    dataloader_workers: Annotated[int, Opt(help="data-loading worker processes")] = 0,
    empty_prompt_prob: Annotated[float, Opt(help="probability of replacing a prompt by \"\"")] = 0.5,
    unlock_decoder: Annotated[bool, Opt(help="also train the SD decoder (paper's large-scale option)")] = False,
    decoder_learning_rate: Annotated[float, Opt(help="learning rate of the unlocked decoder")] = 2e-6,
    only_mid_control: Annotated[bool, Opt(help="feed only the middle block (paper's small-scale option)")] = False,
    learning_rate: Annotated[float, Opt(help="AdamW learning rate of the ControlNet")] = 1e-5,
    adam_weight_decay: Annotated[float, Opt(help="AdamW weight decay")] = 1e-2,
    use_8bit_adam: Annotated[bool, Opt(help="bitsandbytes 8-bit AdamW")] = False,
    max_grad_norm: Annotated[float, Opt(help="gradient clipping norm (0: off)")] = 1.0,
    lr_scheduler: Annotated[str, Opt(help="diffusers scheduler name: constant, cosine, linear, ...")] = "constant",
    lr_warmup_steps: Annotated[int, Opt(help="warm-up steps")] = 0,
    train_batch_size: Annotated[int, Opt("--train-batch-size", "--batch-size", help="batch per process")] = 4,
    gradient_accumulation_steps: Annotated[int, Opt(help="micro-batches per optimizer step")] = 1,
    gradient_checkpointing: Annotated[bool, Opt(help="recompute activations to save memory")] = False,
    mixed_precision: Annotated[str, Opt(help="no, fp16 or bf16")] = "no",
    max_steps: Annotated[int, Opt(help="optimizer steps in all (0: save the initial ControlNet)")] = 10_000,
    seed: Annotated[int, Opt(help="seed of data order, noise and validation")] = 0,
    checkpointing_steps: Annotated[int, Opt(help="checkpoint every N steps (0: never)")] = 500,
    checkpoints_total_limit: Annotated[int, Opt(help="keep the last K checkpoints (0: all)")] = 3,
    resume: Annotated[str | None, Opt(help="'latest' or a checkpoint folder")] = None,
    validation_steps: Annotated[int, Opt(help="sample validation grids every N steps (0: never)")] = 500,
    validation_condition: Annotated[list[str] | None, Opt(help="validation condition image (repeatable)")] = None,
    validation_prompt: Annotated[list[str] | None, Opt(help="validation prompt (repeatable)")] = None,
    num_validation_images: Annotated[int, Opt(help="samples per validation condition")] = 2,
    validation_inference_steps: Annotated[int, Opt(help="sampling steps for validation")] = 20,
    report_to: Annotated[str, Opt(help="tensorboard, wandb, ... or none")] = "tensorboard",
    log_samples: Annotated[bool, Opt(help="write samples.jsonl: the sample ids and loss of every step")] = False,
    eval_every: Annotated[int, Opt(help="every N steps, score how well the validation samples follow their rows' conditions (cn-eval's metrics) and log it (0: never)")] = 0,
) -> None:
    from controlnet.training.data import DataError
    from controlnet.training.trainer import TrainConfig, TrainError, train

    try:
        config = TrainConfig(
            base_model=base_model, dataset=dataset, output_dir=str(output_dir), revision=revision, variant=variant,
            init_controlnet=init_controlnet, controlnet_init=controlnet_init, split=split,  # type: ignore[arg-type]
            dataset_revision=dataset_revision, image_column=image_column,
            conditioning_column=conditioning_column, caption_column=caption_column, streaming=streaming,
            shuffle_buffer=shuffle_buffer, resolution=resolution, center_crop=not random_crop, random_flip=random_flip,
            dataloader_workers=dataloader_workers, empty_prompt_prob=empty_prompt_prob, unlock_decoder=unlock_decoder,
            decoder_learning_rate=decoder_learning_rate, only_mid_control=only_mid_control,
            learning_rate=learning_rate, adam_weight_decay=adam_weight_decay, use_8bit_adam=use_8bit_adam,
            max_grad_norm=max_grad_norm, lr_scheduler=lr_scheduler, lr_warmup_steps=lr_warmup_steps,
            train_batch_size=train_batch_size, gradient_accumulation_steps=gradient_accumulation_steps,
            gradient_checkpointing=gradient_checkpointing, mixed_precision=mixed_precision,  # type: ignore[arg-type]
            max_steps=max_steps, seed=seed, checkpointing_steps=checkpointing_steps,
            checkpoints_total_limit=checkpoints_total_limit or None, resume=resume, validation_steps=validation_steps,
            validation_conditions=list(validation_condition or []), validation_prompts=list(validation_prompt or []),
            num_validation_images=num_validation_images, validation_inference_steps=validation_inference_steps,
            report_to=None if report_to == "none" else report_to, log_samples=log_samples, eval_every=eval_every,
        )
        with Progress(
            TextColumn("[bold]cn-train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
            TimeRemainingColumn(), disable=not _is_main_process(),
        ) as progress:
            task = progress.add_task("", total=max_steps)

            def report(step: int, logs: dict[str, float]) -> None:
                progress.update(task, completed=step, description=f"loss {logs['loss']:.4f}")

            result = train(config, progress=report)
    except (TrainError, DataError, FileNotFoundError, OSError, ValueError) as error:
        fail(str(error).splitlines()[0] if str(error) else type(error).__name__)
    if _is_main_process():
        typer.echo(f"step {result.global_step}: ControlNet saved to {result.controlnet_dir}")


@export_app.command()
def export_command(
    controlnet: Annotated[Path, typer.Argument(help="diffusers ControlNet folder (e.g. out/controlnet)")],
    output: Annotated[Path, typer.Argument(help="the .safetensors file to write")],
    half: Annotated[bool, Opt(help="store float16 weights")] = False,
) -> None:
    import torch

    from controlnet.training.export import LayoutError, export_original

    if output.suffix != ".safetensors":
        fail(f"{output}: the export is a .safetensors file")
    try:
        path = export_original(controlnet, output, dtype=torch.float16 if half else None)
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
