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


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default in its help (where the help does not already say it), and
    descriptions kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if action.default is None or "default" in help_text or isinstance(action.default, bool):
            return help_text
        return super()._get_help_string(action)
