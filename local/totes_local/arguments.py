"""What the local tools' options share: each default shown in ``--help``, numbers checked.

A default is added to an option's help unless its text already states one (some
say more than the value, such as ``$CAPTURE_MODE, else snapshot``) or there is
none to show (no default, or a flag that is off). Numbers are checked as they
are parsed, so a nonsense value is a usage error before any work starts.
"""
import argparse
from typing import Callable


class DefaultsFormatter(argparse.HelpFormatter):
    """Help lines that end with ``(default …)`` wherever a default means something."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        silent = action.default in (None, False, argparse.SUPPRESS) or "default" in text
        positional_required = not action.option_strings and action.nargs not in ("?", "*")
        if silent or positional_required:
            return action.help
        return f"{text} (default %(default)s)"


def positive_float(text: str) -> float:
    """A finite number above zero (a scale), or a usage error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def whole(minimum: int) -> Callable[[str], int]:
    """A parser of whole numbers no smaller than ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        return value
    return parse
