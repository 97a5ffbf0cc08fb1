"""The ``mixdiff`` command: one subcommand per module in ``app.commands``.

Each module exposes ``register(subparsers)``, which adds its parser and sets
``func``; heavy imports happen inside ``func``, so ``mixdiff --help`` stays quick. A
command that is named imports its own module alone: ``mixdiff bench`` runs where the
server's packages (FastAPI, pydantic) are not installed, as on a benchmark host.
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
    argv = sys.argv[1:] if argv is None else list(argv)
    named = [name for name in COMMANDS if argv and name.rsplit(".", 1)[1] == argv[0]]
    for name in named or COMMANDS:
        importlib.import_module(name).register(subparsers)
    args = parser.parse_args(argv)
    args.argv = argv  # for a command that runs itself again
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
