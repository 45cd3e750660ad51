"""``danceopd demo``: the interactive web page (optional ``demo`` extra)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ..errors import UserError
from . import app


@app.command("demo")
def demo_cmd(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default: this machine only)."),
    port: int = typer.Option(7860, "--port", help="Port to serve on."),
    model: list[str] = typer.Option([], "--model", help="A run folder or model file to offer (repeatable)."),
    runs: list[Path] = typer.Option([Path("runs"), Path("results")], "--runs",
                                    help="Folders searched for finished runs and published students (repeatable)."),
    threads: int = typer.Option(1, "--threads", help="Torch threads per request (0 = torch default; 1 answers "
                                "fastest on a busy 2-core machine: the models are tiny)."),
):
    """Web page: models side by side on a prompt or an edit, with exact targets and the judge's verdicts.

    Shipped teachers (world:*), shipped converged students (shipped:*) and your runs; for edits the input and the exact target; the judge's verdict per
    constraint. Needs the demo extra (gradio; installed by install.sh dev)."""
    t0 = time.perf_counter()
    if not 0 < port < 65536:
        raise UserError(f"--port must be in 1..65535, got {port}")
    if threads < 0:
        raise UserError(f"--threads must be >= 0, got {threads}")
    from ..backends.registry import resolve_model_path

    for m in model:
        try:
            resolve_model_path(m)
        except FileNotFoundError:
            raise UserError(f"--model {m!r}: not a shipped name (world:<name>, shipped:<setting>_<method>), file or "
                            "run folder") from None
    from ..demo.app import import_gradio, serve
    from ..demo.core import Demo

    import_gradio()
    demo = Demo(runs, model, threads or None)
    page = serve(demo, host, port, block=False)
    typer.echo(f"danceopd demo at http://{host}:{port} (started in {time.perf_counter() - t0:.1f} s; Ctrl+C stops)")
    try:
        page.block_thread()
    except KeyboardInterrupt:
        pass
