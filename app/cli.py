"""The ``mixdiff`` command: one subcommand per module in ``app.commands``.

Each module exposes ``register(subparsers)``, which adds its parser and sets
``func``; heavy imports happen inside ``func``, so ``mixdiff --help`` stays quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from app import __version__

COMMANDS = [
    "app.commands.serve",
    "app.commands.generate",
    "app.commands.quantize",
    "app.commands.bench",
    "app.commands.eval",
    "app.commands.distill",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mixdiff", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mixdiff {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(subparsers)
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # for a command that runs itself again
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
