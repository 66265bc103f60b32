"""Every user command is a click command; `run` calls one as a function returning its exit code.

`xfed` itself (xfed/cli.py), `python -m xfed.security.tls` and `python -m
xfed.operators.horizontal_chatglm.report` are click commands, each with `-h/--help`.
"""
from __future__ import annotations

import click

HELP = {"help_option_names": ["-h", "--help"]}


def run(command: click.Command, argv: list[str] | None, prog_name: str) -> int:
    """Run `command` on `argv` (None: sys.argv) and return its exit code instead of exiting."""
    try:
        result = command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Exit as done:  # --help
        return done.exit_code
    except click.ClickException as err:  # usage errors: one line, exit 2
        err.show()
        return err.exit_code
    except click.exceptions.Abort:
        return 130
    return result if isinstance(result, int) else 0
