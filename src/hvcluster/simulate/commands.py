"""``hvc sim``: run a scenario, or fuzz random ones, on a simulated cluster (see
:mod:`hvcluster.simulate`). Registered by the composition root (``hvcluster.entry``): the
CLI's layer may not import the agent and controller the simulation runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import typer

from hvcluster.models.errors import HvcError
from hvcluster.simulate.fuzz import fuzz, to_toml
from hvcluster.simulate.runner import Result, run_scenario
from hvcluster.simulate.scenario import load_scenario

VERBOSE = typer.Option(False, "--verbose", "-v", help="Show the daemons' own log (stderr).")


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """The daemons log as they would on a host (retries, failed keepalives): in a
    simulation that is noise beside the event log, shown only when asked for."""
    if verbose:
        yield
        return
    before = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(before)


app = typer.Typer(
    help="Deterministic cluster simulation: real controller and agents, virtual time."
)


@app.command("run")
def run(
    scenario: Path = typer.Argument(..., help="The scenario TOML file."),
    seed: int | None = typer.Option(None, help="The run's seed (default: the scenario's)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    verbose: bool = VERBOSE,
) -> None:
    """Run SCENARIO: print the event log (virtual times) and the final placement; exit 1
    if an invariant broke."""
    try:
        loaded = load_scenario(scenario)
    except HvcError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    with _quiet(verbose):
        result = asyncio.run(run_scenario(loaded, seed))
    typer.echo(json.dumps(result.as_dict(), indent=2) if json_out else result.text(), nl=False)
    if json_out:
        typer.echo()
    if result.violations:
        raise typer.Exit(1)


@app.command("fuzz")
def fuzz_cmd(
    runs: int = typer.Option(100, min=1, help="How many random scenarios."),
    seed: int = typer.Option(0, min=0, help="The first run's seed (then seed+1, ...)."),
    out: Path = typer.Option(Path("."), help="Where shrunk replay scenarios are written."),
    verbose: bool = VERBOSE,
) -> None:
    """Run random scenarios with every invariant checked; for a violation print the seed
    and write a shrunk replay scenario (exit 1)."""
    started = time.monotonic()

    def show(s: int, result: Result) -> None:
        for v in result.violations:
            typer.echo(f"seed {s}: {v.line().strip()}")

    with _quiet(verbose):
        failures = asyncio.run(fuzz(runs, seed, show))
    took = time.monotonic() - started
    typer.echo(f"{runs} runs in {took:.1f} s ({runs / took:.1f} runs/s), "
               f"{len(failures)} with violations")  # fmt: skip
    for failure in failures:
        path = out / f"sim-fuzz-{failure.seed}.toml"
        try:
            out.mkdir(parents=True, exist_ok=True)
            path.write_text(to_toml(failure.shrunk))
        except OSError as e:  # the runs are done: say so, no traceback
            typer.echo(f"seed {failure.seed}: cannot write the replay to {path}: {e}", err=True)
            continue
        typer.echo(f"seed {failure.seed}: replay with 'hvc sim run {path}'")
    if failures:
        raise typer.Exit(1)
