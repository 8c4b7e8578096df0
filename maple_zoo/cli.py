"""The `maple-zoo` command line: thin Typer commands that parse, call one function and print.

Each room registers its own commands (`register(app)`), so this file stays an index. Every
MapleZooError becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

import pydantic
import typer

from .errors import MapleZooError
from .yamlio import format_error

app = typer.Typer(
    name="maple-zoo",
    help="Multi-modal prompt learning on open_clip: train, sweep, and serve prompt checkpoints.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_all() -> None:
    from .commands import register as register_core

    register_core(app)
    from .zoo.commands import register as register_zoo

    register_zoo(app)
    from .sweep.commands import register as register_sweep

    register_sweep(app)


_register_all()


def main() -> None:
    try:
        app(standalone_mode=False)
    except MapleZooError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except pydantic.ValidationError as exc:  # a typed object built from command-line values
        typer.secho(f"error: {format_error(exc, 'input', None)}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        typer.secho("aborted", err=True)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # usage errors: typer's own (vendored) click exceptions derive from it
        show = getattr(exc, "show", None)
        if show is None:
            raise
        show()
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
