"""Argument types shared by the ``mixdiff`` subcommands."""

from __future__ import annotations

import argparse


def at_least(low: int):
    """An argparse ``type`` for integers of at least ``low``, refused with a message that says so."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse
