"""What ``--help`` tells a newcomer: plain text, true sizes, every default."""
import argparse
import re
import subprocess
import sys

import pytest

from totes_local import cli, generator


def help_of(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as done:
        cli.main([*argv, "--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_the_summary_is_plain_text_naming_every_command(capsys):
    text = help_of(capsys)
    assert "``" not in text and ":func:" not in text and text.count(cli.DESCRIPTION[:40]) == 1
    for name in cli.COMMANDS:
        assert re.search(rf"[( ]{name}[,)]", cli.DESCRIPTION), name


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_option_with_a_default_says_it(command):
    parser = cli.build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    assert sub.formatter_class is cli.DefaultsFormatter
    formatter = sub._get_formatter()
    for action in sub._actions:
        if action.help and action.default not in (None, False, argparse.SUPPRESS):
            said = formatter._get_help_string(action) % {"default": action.default}
            assert "default" in said, (command, action.dest)


def test_demo_and_seed_give_the_generators_size(capsys):
    size = generator.size_text(1)
    assert size in help_of(capsys, "demo") and size in help_of(capsys, "seed")


def test_the_command_starts_without_importing_pandas():
    # pandas takes seconds to import on a busy 2-core machine; only `totes audit` (and the demo,
    # which audits) needs it, through totes.audit: every other command, `totes stop` or
    # `totes sql` as much as --help, starts without paying for it.
    probe = ("import sys; from totes_local import cli; "
             "print(sorted({'pandas', 'totes.audit'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, timeout=120)
    assert done.stdout.split() == ["[]"]
