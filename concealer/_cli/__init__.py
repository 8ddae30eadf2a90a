"""Command-line front ends: thin click layers over the library API."""
from __future__ import annotations

import sys
from collections.abc import Callable

import click
from rich.console import Console

from ..errors import ConcealerError, Interrupted

stderr = Console(stderr=True, highlight=False)


def run(command: click.Command, name: str) -> Callable[[], None]:
    """Wrap a click command so every user error ends as one line and a non-zero exit."""

    def main() -> None:
        try:
            command.main(prog_name=name, standalone_mode=False)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            stderr.print(f"{name}: error: {exc.format_message()}", markup=False, soft_wrap=True)
            sys.exit(2)
        except (click.exceptions.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
            stderr.print(f"{name}: interrupted, no output written", markup=False)
            sys.exit(Interrupted.exit_code)
        except ConcealerError as exc:
            stderr.print(f"{name}: {'' if isinstance(exc, Interrupted) else 'error: '}{exc}", markup=False,
                         soft_wrap=True)
            sys.exit(exc.exit_code)

    return main
