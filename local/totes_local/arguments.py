"""What every ``--help`` of the local tools shares: each option's default, shown.

A default is added to an option's help unless its text already states one (some
say more than the value, such as ``$CAPTURE_MODE, else snapshot``) or there is
none to show (no default, or a flag that is off).
"""
import argparse


class DefaultsFormatter(argparse.HelpFormatter):
    """Help lines that end with ``(default …)`` wherever a default means something."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        silent = action.default in (None, False, argparse.SUPPRESS) or "default" in text
        positional_required = not action.option_strings and action.nargs not in ("?", "*")
        if silent or positional_required:
            return action.help
        return f"{text} (default %(default)s)"
