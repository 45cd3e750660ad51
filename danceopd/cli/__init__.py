"""The ``danceopd`` command line. User errors print one line and exit 2 (``--debug`` shows the traceback)."""

from __future__ import annotations

import sys

import typer

from ..errors import UserError

app = typer.Typer(
    help="danceopd: compose frozen flow-matching capability fields into one student by on-policy distillation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
STATE = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors.")):
    STATE["debug"] = debug


def _register():
    from . import data as _data  # noqa: F401
    from . import demo as _demo  # noqa: F401
    from . import eval as _eval  # noqa: F401
    from . import generate as _generate  # noqa: F401
    from . import reproduce as _reproduce  # noqa: F401
    from . import train as _train  # noqa: F401
    from . import world as _world  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    _register()
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        app(args=args, prog_name="danceopd", standalone_mode=False)
    except UserError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (typer.Exit, SystemExit) as e:
        code = getattr(e, "exit_code", getattr(e, "code", 0))
        return int(code or 0)
    except Exception as e:  # usage errors (missing option, bad value): one usage line, exit 2
        usage, abort = _click_exception_types()
        if isinstance(e, usage):
            e.show()
            return 2
        if isinstance(e, abort):
            return 130
        raise
    return 0


def _click_exception_types():
    """typer >= 0.16 vendors its own click (``typer._click``); older typer uses click itself."""
    usage, abort = [], []
    try:
        import click

        usage.append(click.exceptions.ClickException)
        abort.append(click.exceptions.Abort)
    except ImportError:  # pragma: no cover
        pass
    try:
        from typer._click import exceptions as tce

        usage.append(tce.ClickException)
        if hasattr(tce, "Abort"):
            abort.append(tce.Abort)
    except ImportError:  # pragma: no cover
        pass
    return tuple(usage), tuple(abort)


def run():  # console script
    sys.exit(main())
