"""The training-data flags of the commands that train (``quantize qat``, ``distill``) and the
data source they name."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.commands.arguments import at_least


def read_lines(path: Path, what: str) -> list[str]:
    """The non-blank lines of ``path`` (prompts, one per line), stripped; ``what`` names the flag."""
    if not path.is_file():
        raise ValueError(f"{what} {path} is not a file")
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path} holds no prompts")
    return lines


def add_data_arguments(
    parser: argparse.ArgumentParser, size: int | None, size_help: str = ""
) -> argparse._ArgumentGroup:
    """``--data``, ``--data-prompts`` and ``--data-size`` (default ``size``, or as ``size_help``
    says), in a group the caller may extend."""
    data = parser.add_argument_group("training data")
    data.add_argument(
        "--data",
        default="shapes",
        help="'shapes': the embedded model's own data set; 'generated': data-free, latents the FP32 model "
        "generates from --data-prompts; or a folder of images, each with a caption in a .txt file of the "
        "same name",
    )
    data.add_argument(
        "--data-prompts",
        type=Path,
        default=None,
        help="with --data generated: prompts, one per line (default: the calibration prompts)",
    )
    data.add_argument(
        "--data-size",
        type=at_least(2),
        default=size,
        help="training examples (images, or generated latents)" + (f"; {size_help}" if size_help else ""),
    )
    return data


def training_data(args: argparse.Namespace, prompts: list[str], shapes_seed: int):
    """The ``--data`` source: the shapes data set drawn with ``shapes_seed``, latents generated
    from ``--data-prompts`` (else ``prompts``), or a folder of captioned images."""
    from common.training import GeneratedLatents, ImageFolder, Images

    if args.data == "shapes":
        from shapes import dataset

        return Images(lambda n: dataset.examples(n, shapes_seed), "the shapes data set (embedded model)")
    if args.data == "generated":
        source = read_lines(args.data_prompts, "--data-prompts") if args.data_prompts else prompts
        return GeneratedLatents(source, seed=args.train_seed)
    return ImageFolder(Path(args.data))
