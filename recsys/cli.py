"""Running a stage's Typer app so that user errors end in one line and a non-zero exit."""

from __future__ import annotations

import sys

import click
import typer

try:  # typer >= 0.2x ships its own click: its usage errors are not click's classes
    from typer._click.exceptions import ClickException as _TyperClickException
except ImportError:  # pragma: no cover - older typer uses click itself
    _TyperClickException = click.exceptions.ClickException
_USAGE_ERRORS = (click.exceptions.ClickException, _TyperClickException)
_ABORTS = (click.exceptions.Abort, typer.Abort, KeyboardInterrupt)


class RecsysError(Exception):
    """A problem the user can fix (bad input, missing file, wrong option): shown as one line."""


def fail(message: str) -> RecsysError:
    """Build a user error; ``raise fail("...")`` reads as the sentence it prints."""
    return RecsysError(message)


def run(app: typer.Typer) -> None:
    """Invoke ``app``; print user errors as ``error: ...`` on stderr and exit non-zero."""
    try:
        code = app(standalone_mode=False)
    except RecsysError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except _USAGE_ERRORS as err:
        err.show()
        raise SystemExit(err.exit_code) from None
    except _ABORTS:
        print(
            "error: interrupted; outputs of the unfinished step were not written", file=sys.stderr
        )
        raise SystemExit(130) from None
    raise SystemExit(code if isinstance(code, int) else 0)
