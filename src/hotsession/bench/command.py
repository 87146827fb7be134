"""``hotsession bench``: measure hotsession against every other way of running Claude Code.

hotsession bench --quick                    # about a minute, a first look
hotsession bench --json out.json --plot out.png
hotsession bench --transport                # the measurement behind docs/transport.md
hotsession bench --load --rate 0.5 --duration 60 --memory-budget-mb 2000
hotsession bench --concurrency 50           # follow-ups on 50 sessions at once vs 50 bare CLIs
hotsession bench --pause                    # also: follow-ups after a 20 s pause (~2 min more)
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hotsession.bench.environment import BenchEnv, BenchError
from hotsession.bench.memory import measure
from hotsession.bench.modes import (
    BareCli,
    BarePreSpawned,
    FreshPrint,
    LeanTransport,
    Mode,
    ResumePrint,
    SdkClient,
    SdkQuery,
)
from hotsession.bench.output import PlotUnavailable, print_result, write_json, write_plot
from hotsession.bench.pause import (
    DEFAULT_PAUSE_ROUNDS,
    DEFAULT_PAUSE_S,
    PAUSE_MODES,
    QUICK_PAUSE_ROUNDS,
    BareCliAfterPause,
)
from hotsession.bench.runner import Runner, RunResult, machine_info
from hotsession.cli.main import main

BASELINES: tuple[type[Mode], ...] = (FreshPrint, ResumePrint, SdkQuery, BareCli, BarePreSpawned)
TRANSPORTS: tuple[type[Mode], ...] = (BareCli, LeanTransport, SdkClient)

QUICK_ROUNDS = 5
DEFAULT_ROUNDS = 30
QUICK_TRANSPORT_ROUNDS = 40
DEFAULT_TRANSPORT_ROUNDS = 200
QUICK_CPU_TURNS = 100
DEFAULT_CPU_TURNS = 300
QUICK_CONCURRENCY_ROUNDS = 5
DEFAULT_CONCURRENCY_ROUNDS = 20


def _http_modes() -> tuple[type[Mode], ...]:
    """hotsession's modes through the HTTP API (none in a build without ``hotsession serve``)."""
    if importlib.util.find_spec("hotsession.cli.serve") is None:
        return ()
    from hotsession.bench.http_modes import HTTP_MODES

    return HTTP_MODES


def _paused_modes() -> tuple[type[Mode], ...]:
    """``bench --pause``'s modes: hotsession's (when the build has the HTTP API), the bare CLIs."""
    if importlib.util.find_spec("hotsession.cli.serve") is None:
        return PAUSE_MODES
    from hotsession.bench.http_modes import HsFollowUpAfterPause

    return (HsFollowUpAfterPause, *PAUSE_MODES)


def _with_pause_reference(classes: tuple[type[Mode], ...]) -> tuple[type[Mode], ...]:
    """A paused mode's ratios are against the bare CLI after the same pause: it runs too."""
    if any(c.paused for c in classes) and BareCliAfterPause not in classes:
        return (*classes, BareCliAfterPause)
    return classes


def _select(classes: tuple[type[Mode], ...], only: str | None) -> tuple[type[Mode], ...]:
    if not only:
        return classes
    wanted = [w.strip().lower() for w in only.split(",") if w.strip()]
    picked = tuple(c for c in classes if any(w in c.name.lower() for w in wanted))
    if not picked:
        names = ", ".join(c.name for c in classes)
        raise click.BadParameter(f"no mode matches {only!r}; modes: {names}", param_hint="--only")
    return picked


async def _with_progress(
    console: Console, total: int, body: Callable[[Callable[[str, int], None]], Awaitable[Any]]
) -> Any:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("starting", total=total)

        def update(description: str, advance: int) -> None:
            progress.update(task, description=description, advance=advance)

        return await body(update)


async def _run_modes(
    env: BenchEnv,
    classes: tuple[type[Mode], ...],
    *,
    kind: str,
    rounds: int,
    warmup: int,
    console: Console,
    pause_s: float = 0.0,
    pause_rounds: int = 0,
) -> RunResult:
    modes = [cls(env) for cls in classes]
    daemon: Any = None
    if any(m.group == "hotsession" for m in modes):
        from hotsession.bench.http_modes import attach_daemon

        console.print("starting hotsession serve …")
        daemon = await attach_daemon(modes, env)

    async def memory_probe() -> dict[str, Any]:
        by_role: dict[str, list[int]] = {}
        for mode in modes:
            for role, pid in mode.pids().items():
                by_role.setdefault(role, []).append(pid)
        for mode in modes:
            daemon_memory = getattr(mode, "daemon_memory", None)
            if daemon_memory is not None:
                for role, pids in (await daemon_memory()).items():
                    by_role.setdefault(role, []).extend(pids)
                break
        return measure(by_role)

    runner = Runner(
        env,
        modes,
        rounds=rounds,
        warmup=warmup,
        memory_probe=memory_probe,
        pause_s=pause_s,
        pause_rounds=pause_rounds,
    )

    async def body(progress: Callable[[str, int], None]) -> RunResult:
        runner.progress = progress
        return await runner.run(kind)

    try:
        result: RunResult = await _with_progress(console, runner.steps, body)
    finally:
        if daemon is not None:
            await daemon.stop()
    return result


async def _run_concurrency(
    env: BenchEnv,
    *,
    n: int,
    rounds: int,
    warmup: int,
    memory_budget_mb: float | None,
    console: Console,
) -> RunResult:
    from hotsession.bench.concurrency import run_concurrency, setup_steps

    console.print(f"starting hotsession serve and {n} + {n} processes …")

    async def body(progress: Callable[[str, int], None]) -> RunResult:
        return await run_concurrency(
            env,
            n=n,
            rounds=rounds,
            warmup=warmup,
            progress=progress,
            memory_budget_mb=memory_budget_mb,
        )

    result: RunResult = await _with_progress(console, setup_steps(n) + 2 * (warmup + rounds), body)
    return result


@main.command()
@click.option("--quick", is_flag=True, help="A first look in about a minute (few rounds).")
@click.option("--rounds", type=click.IntRange(1), default=None, help="Timed rounds per mode.")
@click.option(
    "--warmup",
    type=click.IntRange(0),
    default=1,
    show_default=True,
    help="Untimed rounds of every mode before the timed ones (first spawns, caches).",
)
@click.option("--transport", is_flag=True, help="Compare transports (bare CLI, lean, SDK client).")
@click.option(
    "--dropin", is_flag=True, help="The Agent SDK through hotsession-claude against the SDK alone."
)
@click.option("--load", is_flag=True, help="Poisson load through the HTTP API instead.")
@click.option(
    "--cluster",
    "cluster",
    is_flag=True,
    help="Cluster mode on a local 3-node Ray cluster and a private Postgres (docs/cluster.md).",
)
@click.option(
    "--cpu",
    "cpu",
    is_flag=True,
    help="The daemon's CPU per turn against the CLI's (plain and 500-delta turns), idle rate.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1),
    default=None,
    help="Follow-ups on N live sessions at once, against N bare CLIs at once.",
)
@click.option("--rate", type=float, default=0.5, show_default=True, help="--load: arrivals/s.")
@click.option("--duration", type=float, default=60.0, show_default=True, help="--load: seconds.")
@click.option(
    "--new-fraction",
    type=click.FloatRange(0, 1),
    default=0.3,
    show_default=True,
    help="--load: share of arrivals that open a new session (the rest are follow-ups).",
)
@click.option(
    "--one-off",
    "one_off",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="--load: share of new sessions that open a profile never seen again.",
)
@click.option(
    "--memory-budget-mb",
    type=float,
    default=None,
    help="--load / --concurrency: the daemon's memory budget.",
)
@click.option(
    "--pause",
    "pause_s",
    type=click.FloatRange(min=0, min_open=True),
    is_flag=False,
    flag_value=DEFAULT_PAUSE_S,
    default=None,
    metavar="[S]",
    help=(
        "Also time a follow-up after a pause of S seconds (default 20): hotsession's session and"
        " bare CLIs (hotsession's env and Bun's defaults), their pauses at once; opt-in, it adds"
        " about pause × (pause rounds + 1) to the run."
    ),
)
@click.option(
    "--pause-rounds",
    type=click.IntRange(1),
    default=None,
    help=f"--pause: timed turns per mode (default {DEFAULT_PAUSE_ROUNDS}, --quick"
    f" {QUICK_PAUSE_ROUNDS}).",
)
@click.option("--only", default=None, help="Comma-separated substrings of mode names to run.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write raw samples.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write a PNG figure.")
@click.option("--cli-path", default=None, help="The Claude Code binary (default: bundled).")
@click.option(
    "--permission-mode", default="bypassPermissions", show_default=True, help="For every mode."
)
@click.option("--keep-dir", is_flag=True, help="Keep the run's temp dir (logs, state).")
def bench(
    quick: bool,
    rounds: int | None,
    warmup: int,
    transport: bool,
    dropin: bool,
    load: bool,
    cluster: bool,
    cpu: bool,
    concurrency: int | None,
    rate: float,
    duration: float,
    new_fraction: float,
    one_off: float,
    memory_budget_mb: float | None,
    pause_s: float | None,
    pause_rounds: int | None,
    only: str | None,
    json_path: str | None,
    plot_path: str | None,
    cli_path: str | None,
    permission_mode: str,
    keep_dir: bool,
) -> None:
    """Benchmark hotsession against `claude -p`, `--resume`, the SDK and the bare CLI."""
    console = Console(stderr=True)
    if plot_path:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise click.ClickException(
                "--plot needs matplotlib: pip install 'hotsession[dev]' (or pip install matplotlib)"
            ) from None
    if sum((transport, dropin, load, cpu, cluster, concurrency is not None)) > 1:
        raise click.UsageError(
            "--transport, --dropin, --load, --cpu, --cluster and --concurrency are separate runs;"
            " pick one"
        )
    if pause_s is not None and (transport or dropin or load or cpu or cluster or concurrency):
        raise click.UsageError(
            "--pause adds to the modes run; it cannot go with --transport,"
            " --dropin, --load, --cpu, --cluster or --concurrency"
        )
    if cluster:
        _bench_cluster(quick, rounds, json_path, cli_path, permission_mode, keep_dir, console)
        return
    try:
        env = BenchEnv(cli_path=cli_path, permission_mode=permission_mode, keep_dir=keep_dir)
    except Exception as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        env.start()
        if cpu:
            from hotsession.bench.cpu import run_cpu

            console.print("starting hotsession serve … (--cpu)")
            n = rounds or (QUICK_CPU_TURNS if quick else DEFAULT_CPU_TURNS)
            figures = asyncio.run(
                run_cpu(env, turns=n, streamed_turns=max(10, n // 5), idle_s=5 if quick else 20)
            )
            result = RunResult("cpu", [], machine_info(), cpu=figures)
        elif load:
            from hotsession.bench.load import run_load

            result = asyncio.run(
                run_load(
                    env,
                    rate=rate,
                    duration=(min(duration, 30.0) if quick else duration),
                    new_fraction=new_fraction,
                    memory_budget_mb=memory_budget_mb,
                    console=console,
                    one_off_fraction=one_off,
                )
            )
        elif concurrency is not None:
            n = rounds or (QUICK_CONCURRENCY_ROUNDS if quick else DEFAULT_CONCURRENCY_ROUNDS)
            result = asyncio.run(
                _run_concurrency(
                    env,
                    n=concurrency,
                    rounds=n,
                    warmup=warmup,
                    memory_budget_mb=memory_budget_mb,
                    console=console,
                )
            )
        elif dropin:
            from hotsession.bench.dropin_modes import DROPIN_MODES, NOTES

            n = rounds or (QUICK_ROUNDS if quick else DEFAULT_ROUNDS)
            result = asyncio.run(
                _run_modes(
                    env,
                    _select((SdkQuery, BareCli, SdkClient, *DROPIN_MODES), only),
                    kind="dropin",
                    rounds=n,
                    warmup=warmup,
                    console=console,
                )
            )
            for name, value in NOTES.items():
                console.print(f"{name}: {value}")
        elif transport:
            n = rounds or (QUICK_TRANSPORT_ROUNDS if quick else DEFAULT_TRANSPORT_ROUNDS)
            result = asyncio.run(
                _run_modes(
                    env,
                    _select(TRANSPORTS, only),
                    kind="transport",
                    rounds=n,
                    warmup=warmup,
                    console=console,
                )
            )
        else:
            paused = _paused_modes() if pause_s is not None else ()
            classes = _with_pause_reference(_select(BASELINES + _http_modes() + paused, only))
            n = rounds or (QUICK_ROUNDS if quick else DEFAULT_ROUNDS)
            result = asyncio.run(
                _run_modes(
                    env,
                    classes,
                    kind="modes",
                    rounds=n,
                    warmup=warmup,
                    console=console,
                    pause_s=pause_s or 0.0,
                    pause_rounds=pause_rounds
                    or (QUICK_PAUSE_ROUNDS if quick else DEFAULT_PAUSE_ROUNDS),
                )
            )
            if not _http_modes():
                console.print(
                    "[yellow]note:[/] the hotsession HTTP modes are not available in this build"
                )
    except BenchError as exc:
        raise click.ClickException(exc.message) from exc
    finally:
        env.stop()
    result.meta["command"] = " ".join(["hotsession", *sys.argv[1:]]) if sys.argv else "bench"
    print_result(result)
    if json_path:
        write_json(result, json_path)
        console.print(f"raw samples: {json_path}")
    if plot_path:
        try:
            write_plot(result, plot_path)
        except PlotUnavailable as exc:
            raise click.ClickException(str(exc)) from exc
        console.print(f"plot: {plot_path}")


def _bench_cluster(
    quick: bool,
    rounds: int | None,
    json_path: str | None,
    cli_path: str | None,
    permission_mode: str,
    keep_dir: bool,
    console: Console,
) -> None:
    """``bench --cluster`` (hotsession.cluster.bench): prints and writes its figures as JSON."""
    try:
        from hotsession.cluster.bench import run_cluster_bench
    except ImportError as exc:
        raise click.ClickException(
            f"--cluster needs the cluster extra (pip install 'hotsession[cluster]'): {exc}"
        ) from None
    env = BenchEnv(cli_path=cli_path, permission_mode=permission_mode, keep_dir=keep_dir)
    try:
        env.start()
        n = rounds or (10 if quick else 50)
        figures = asyncio.run(run_cluster_bench(env, rounds=n, console=console))
    except BenchError as exc:
        raise click.ClickException(exc.message) from exc
    finally:
        env.stop()
    figures["machine"] = machine_info()
    text = json.dumps(figures, indent=2, default=str)
    print(text)
    if json_path:
        Path(json_path).write_text(text + "\n")
        console.print(f"figures: {json_path}")
