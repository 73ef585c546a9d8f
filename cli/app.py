"""The ``finesteer-edge`` command (Typer).

Every expected failure is a :class:`FinesteerError`; it prints one ``error: ...`` line on stderr and
exits with code 2, never a traceback. ``--debug`` shows tracebacks for bug reports.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

try:  # newer typer vendors click; its usage errors derive from this class
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - typer on plain click
    from click.exceptions import ClickException  # type: ignore[no-redef]

from finesteer_edge.errors import FinesteerError

from . import bench_cmds, eval_cmds, model_cmds, pack_cmds, run_cmds, serve_cmds, train_cmds

app = typer.Typer(
    name="finesteer-edge",
    help="FineSteer-style conditional steering for GGUF models on CPU (llama.cpp control vectors).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_state = {"debug": False}


@app.callback()
def _root(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output (-vv: llama.cpp too)."),
    debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks on errors."),
) -> None:
    _state["debug"] = debug
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if verbose < 2:
        logging.getLogger("finesteer_edge.llama").setLevel(logging.ERROR)


model_cmds.register(app)
run_cmds.register(app)
pack_cmds.register(app)
bench_cmds.register(app)
train_cmds.register(app)
eval_cmds.register(app)
serve_cmds.register(app)


def error(message: str) -> None:
    first = " ".join(str(message).split())
    print(f"error: {first}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's BLAS must not fight ggml for the cores
    try:
        rv = app(args=argv, standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except FinesteerError as exc:
        if _state["debug"]:
            raise
        error(str(exc))
        code = 2
    except typer.Exit as exc:
        code = exc.exit_code
    except ClickException as exc:
        exc.show()
        code = 2
    except typer.Abort:
        print("aborted", file=sys.stderr)
        code = 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:
        code = 0
    if __name__ == "__main__" or argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":  # pragma: no cover
    main()
