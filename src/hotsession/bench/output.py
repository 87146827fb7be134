"""What a run shows: the terminal table (rich), the JSON file of raw samples, the plot."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from hotsession.bench.runner import RunResult
from hotsession.bench.stats import METRICS, Summary, error_counts

_LABELS = {"to_model_ms": "to model", "first_event_ms": "first event", "result_ms": "result"}


def _fmt_ms(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}"


def _cell(summary: Summary | None) -> str:
    if summary is None:
        return "—"
    return f"{_fmt_ms(summary.median)} / {_fmt_ms(summary.p95)} / {_fmt_ms(summary.min)}"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def table(result: RunResult) -> Table:
    """The summary table: per mode, each metric's median / p95 / min (ms) and the ratios."""
    t = Table(
        title=f"hotsession bench ({result.kind}) — ms, median / p95 / min",
        caption=(
            "×floor and ×`claude -p`: ratio of medians, to model · result; "
            "+floor ms: median of per-round differences to the floor, to model · result"
        ),
    )
    t.add_column("mode", style="bold", no_wrap=True)
    t.add_column("n", justify="right")
    for metric in METRICS:
        t.add_column(_LABELS[metric], justify="right")
    t.add_column("×floor", justify="right")
    t.add_column("×claude -p", justify="right")
    t.add_column("+floor ms", justify="right")
    t.add_column("errors", justify="right")
    ratios = result.ratios()
    overheads = result.overheads()
    errors = dict.fromkeys(result.groups, 0)
    for s in result.samples:
        if not s.ok:
            errors[s.mode] = errors.get(s.mode, 0) + 1
    for mode, by_metric in result.summaries().items():
        if mode in result.paused:
            continue  # in pause_table
        n = max((s.n for s in by_metric.values() if s is not None), default=0)
        refs = ratios.get(mode, {})
        cols = []
        for ref in ("floor", "print"):
            r = refs.get(ref)
            cols.append(
                "—" if r is None else f"{_ratio(r['to_model_ms'])} · {_ratio(r['result_ms'])}"
            )
        over = overheads.get(mode)
        cols.append(
            "—"
            if not over or not over.get("to_model_ms") or not over.get("result_ms")
            else f"{over['to_model_ms']['median']:+.1f} · {over['result_ms']['median']:+.1f}"
        )
        err = errors.get(mode, 0)
        t.add_row(
            mode,
            str(n),
            *(_cell(by_metric.get(m)) for m in METRICS),
            *cols,
            f"[red]{err}[/]" if err else "0",
        )
    return t


def _pair(values: dict[str, Any] | None, fmt: str) -> str:
    """``to model · result`` of a ``{metric: value}`` dict, or a dash."""
    if not values or values.get("to_model_ms") is None or values.get("result_ms") is None:
        return "—"
    return f"{fmt.format(values['to_model_ms'])} · {fmt.format(values['result_ms'])}"


def pause_table(result: RunResult) -> Table | None:
    """``bench --pause``: each paused mode against the bare CLI after the same pause."""
    pause = result.pause()
    if not pause:
        return None
    t = Table(
        title=(
            f"hotsession bench — a follow-up after a pause of {pause.get('pause_s')} s"
            " — ms, median / p95 / min"
        ),
        caption=(
            f"×bare after pause: ratio of medians to `{pause['reference']}`, to model · result; "
            "+bare ms: median of per-round differences to it; ×back to back: ratio of medians "
            "to the same turn without the pause (this run)"
        ),
    )
    t.add_column("mode", style="bold", no_wrap=True)
    t.add_column("n", justify="right")
    t.add_column("pause s", justify="right")
    for metric in METRICS:
        t.add_column(_LABELS[metric], justify="right")
    for col in ("×bare after pause", "+bare ms", "×back to back", "errors"):
        t.add_column(col, justify="right")
    summaries, ratios, overheads = result.summaries(), result.ratios(), result.overheads()
    errors = error_counts(result.samples)
    for mode, info in pause["modes"].items():
        by_metric = summaries.get(mode, {})
        n = max((s.n for s in by_metric.values() if s is not None), default=0)
        waited = info.get("pause_s")
        over = overheads.get(mode) or {}
        err = errors.get(mode, 0)
        t.add_row(
            mode,
            str(n),
            "—" if not waited else f"{waited['median']:.2f}",
            *(_cell(by_metric.get(m)) for m in METRICS),
            _pair(ratios.get(mode, {}).get("pause"), "{:.2f}×"),
            _pair({m: (v or {}).get("median") for m, v in over.items()}, "{:+.1f}"),
            _pair(ratios.get(mode, {}).get("back_to_back"), "{:.2f}×"),
            f"[red]{err}[/]" if err else "0",
        )
    return t


def memory_table(memory: dict[str, Any]) -> Table | None:
    """Per-role memory (MiB): anonymous, PSS, RSS."""
    roles = memory.get("roles") or {}
    if not roles:
        return None
    t = Table(title="memory per process (MiB) — anonymous / PSS / RSS")
    t.add_column("role", style="bold", no_wrap=True)
    t.add_column("n", justify="right")
    for col in ("anon (mean)", "PSS (mean)", "RSS (mean)", "Σ anon", "Σ PSS", "Σ RSS"):
        t.add_column(col, justify="right")
    for role, r in roles.items():
        t.add_row(
            role,
            str(r["n"]),
            *(f"{r[k]:.0f}" for k in ("anon_mean", "pss_mean", "rss_mean")),
            *(f"{r[k]:.0f}" for k in ("anon_sum", "pss_sum", "rss_sum")),
        )
    return t


def cpu_table(cpu: dict[str, Any]) -> Table:
    """``--cpu``: the daemon's CPU per turn beside the CLI's, and the idle rate."""
    idle = cpu.get("idle") or {}
    t = Table(
        title="hotsession bench --cpu — CPU ms per turn (daemon: minus its idle rate)",
        caption=(
            f"idle daemon ({idle.get('sessions')} idle sessions, spares ready): "
            f"{idle.get('ms_per_s')} ms of CPU per s over {idle.get('seconds')} s"
        ),
    )
    for col in ("turn", "n", "wall ms", "daemon ms", "CLI ms", "daemon / CLI", "target"):
        t.add_column(col, justify="left" if col == "turn" else "right")
    for name, row in (cpu.get("turns") or {}).items():
        target = row.get("target")
        verdict = "floor" if row.get("floor") else "—"  # the bare relay (bench/relay.py)
        if target is not None:
            verdict = f"≤ {target:.0%} " + (
                "[green]met[/]" if row.get("met") else "[red]not met[/]"
            )
        ratio_ = row.get("ratio")
        t.add_row(
            name,
            str(row["turns"]),
            f"{row['wall_ms_per_turn']:.1f}",
            f"{row['daemon_ms_per_turn']:.2f}",
            f"{row['cli_ms_per_turn']:.1f}",
            "—" if ratio_ is None else f"{ratio_:.1%}",
            verdict,
        )
    return t


def idle_cli_table(idle: dict[str, Any]) -> Table:
    """``--cpu``'s idle-CLI row (hotsession.bench.idle_cli): ms of CPU per s after the last turn."""
    t = Table(
        title="hotsession bench --cpu — idle CLIs, ms of CPU per s (× the bare CLI's)",
        caption=(
            f"windows from the session's and the bare CLI's last turns (back to back); "
            f"beside: during {idle.get('beside_turns')} turns of another session "
            f"({idle.get('beside_s')} s); spares: {idle.get('spares')}, aged "
            f"{idle.get('spare_age_s')} s at the start"
        ),
    )
    t.add_column("CLI", justify="left")
    for label in idle["windows"]:
        t.add_column(label, justify="right")
    for role, rates in idle["ms_per_s"].items():
        ratios = idle["vs_bare"].get(role, {})
        cells = []
        for label in idle["windows"]:
            ratio_ = ratios.get(label)
            cells.append(f"{rates[label]:.2f}" + ("" if ratio_ is None else f" ({ratio_:.2f}×)"))
        t.add_row(role, *cells)
    return t


def print_result(result: RunResult, console: Console | None = None) -> None:
    """Print the tables (and load / error notes) to the terminal."""
    # Piped output (a file, CI) would wrap the table at 80 columns; keep it readable there.
    console = console or Console(width=None if sys.stdout.isatty() else 170)
    if result.cpu:
        console.print(cpu_table(result.cpu))
        if result.cpu.get("idle_clis"):
            console.print(idle_cli_table(result.cpu["idle_clis"]))
        return
    if any(mode not in result.paused for mode in result.summaries()):
        console.print(table(result))
    paused = pause_table(result)
    if paused is not None:
        console.print(paused)
    for mode, out in result.outside_cli().items():
        console.print(
            f"{mode}: time outside the CLI (HTTP in, daemon, SSE out) median "
            f"{out['median']:.2f} ms, p95 {out['p95']:.2f}, min {out['min']:.2f} (n={out['n']})"
        )
    for target in result.targets():
        verdict = "[green]met[/]" if target["met"] else "[red]not met[/]"
        if "ratio" in target:
            console.print(
                f"target: {target['mode']} ≤ {target['limit']}× {target['reference']} "
                f"({_LABELS.get(target['metric'], target['metric'])}): "
                f"{target['ratio']:.2f}× {verdict}"
            )
        else:
            console.print(
                f"target: claim (POST /v1/sessions, a spare ready, {target['client']} client)"
                f" ≤ {target['limit_ms']} ms median: {target['median_ms']:.2f} ms {verdict}"
            )
    mem = memory_table(result.memory)
    if mem is not None:
        console.print(mem)
    if result.load:
        console.print_json(data=result.load)
    bad = [s for s in result.samples if not s.ok]
    for s in bad[:10]:
        console.print(f"[red]error[/] {s.mode} round {s.round}: {s.error}")
    if len(bad) > 10:
        console.print(f"[red]… {len(bad) - 10} more errors (see --json)[/]")


def write_json(result: RunResult, path: str | Path) -> None:
    """Write every raw sample plus the summaries."""
    Path(path).write_text(json.dumps(result.to_dict(), indent=1) + "\n", encoding="utf-8")


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def write_plot(result: RunResult, path: str | Path, metric: str = "result_ms") -> None:
    """One figure: the distribution of ``metric`` per mode, on a log axis (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailable(
            "--plot needs matplotlib: pip install 'hotsession[dev]' (or pip install matplotlib)"
        ) from exc
    modes = [m for m in result.summaries() if any(s.ms(metric) for s in result.samples)]
    data = [
        [v for v in (s.ms(metric) for s in result.samples if s.mode == m) if v is not None]
        for m in modes
    ]
    fig, ax = plt.subplots(figsize=(10, 0.55 * max(len(modes), 3) + 1.5))
    try:
        if data:
            ax.boxplot(data, orientation="horizontal", whis=(5, 95), showfliers=True)
            for i, values in enumerate(data, start=1):
                ax.scatter(values, [i] * len(values), s=6, alpha=0.4)
            ax.set_yticks(range(1, len(modes) + 1), modes)
        ax.set_xscale("log")
        ax.set_xlabel(f"{_LABELS.get(metric, metric)} (ms, log scale)")
        ax.set_title(f"hotsession bench ({result.kind}): time to {_LABELS.get(metric, metric)}")
        ax.grid(True, axis="x", which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
