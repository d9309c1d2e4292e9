"""The algorithm half of the ``sdpo`` command line (``workers/cli.py`` adds the service commands).

Commands keep no logic: they parse arguments, call the library, print, and exit 2 on invalid input.
"""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="SDPO Studio: self-distilled policy optimization.")
data_app = typer.Typer(no_args_is_help=True, help="Dataset tools.")
app.add_typer(data_app, name="data")


def fail(message: str, code: int = 2) -> None:
    """Print a clear error and exit (2 = invalid input)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.command("make-tiny-model")
def make_tiny_model_cmd(
    out: str = typer.Option(..., "--out", help="Directory to write the checkpoint to."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Build the tiny local causal LM + byte-level BPE tokenizer (no download)."""
    from sdpo.tiny import make_tiny_model

    path = make_tiny_model(out, seed=seed)
    typer.echo(str(path))


def main() -> None:  # pragma: no cover - console entry
    app()
