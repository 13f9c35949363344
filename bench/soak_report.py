"""What the soak (bench/soak.py) measured, judged and shown: its samples and fault events, the
four targets with PASS/FAIL, the accounting of every job, the Markdown for docs/soak.md and
the plot (matplotlib, Agg backend).

Targets, each over the steady phase (time 0 = the first job of steady load):
- worker RSS flat after warm-up: for each worker, the RSS of its main process plus its pool
  children, over the samples taken after the run's warm-up (the first quarter of the run, at
  most 5 minutes) and at least RESTART_WARMUP_S after that worker's last (re)start; spread
  (max - min) / min <= 10 %;
- Redis memory levels off: the largest used_memory of the last third of the run <= 1.1 x the
  largest of the middle third;
- latency: p99 (submit to the report's arrival at the sink) of the jobs submitted in the last
  window <= 1.2 x that of the first window; window = 5 minutes, a quarter of shorter runs;
- every job accounted for: each submitted id reached the sink (distinct ids delivered ==
  ids submitted), no id the producer did not submit, no submission given up.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RSS_SPREAD = 0.10
REDIS_GROWTH = 1.10
P99_RATIO = 1.2
WARMUP_MAX_S = 300.0
RESTART_WARMUP_S = 60.0
WINDOW_MAX_S = 300.0


@dataclass
class Sample:
    t: float  # seconds since the steady load started
    rss: list[tuple[float, float]]  # per worker: (main, children) MiB
    redis_mib: float | None
    outbox: int | None
    keys: int | None
    submitted: int
    delivered: int
    p50: float | None = None  # ms, jobs submitted since the previous sample
    p99: float | None = None


@dataclass
class Event:
    t: float
    kind: str  # "kill" | "redis" | "exit"
    label: str


@dataclass
class Accounting:
    submitted: int
    delivered: int  # distinct submitted ids that reached the sink
    missing: list[str]
    unexpected: list[str]  # ids at the sink the producers never submitted
    abandoned: list[str]  # submissions given up (Redis away too long)
    duplicate_ids: int  # ids that arrived more than once (all answered 200)
    duplicate_deliveries: int  # arrivals beyond the first, over all ids
    bad_keys: int  # arrivals whose Idempotency-Key was not the job id
    statuses: dict[str, int]
    retries: int  # submission attempts that failed and were tried again

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.abandoned)


@dataclass
class SoakRun:
    minutes: float
    sample_s: float
    workers: list[str]
    settings: dict[str, str]
    capacity: float
    rate: float
    op: str
    samples: list[Sample] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    starts: dict[str, list[float]] = field(default_factory=dict)  # worker -> (re)start times
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (submit t, ms)
    accounting: Accounting | None = None
    wall_s: float = 0.0

    @property
    def duration_s(self) -> float:
        return self.minutes * 60

    @property
    def warmup_s(self) -> float:
        return min(WARMUP_MAX_S, self.duration_s / 4)

    @property
    def window_s(self) -> float:
        return min(WINDOW_MAX_S, self.duration_s / 4)


# --- figures ---------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fill_latencies(run: SoakRun) -> None:
    """p50/p99 of each sample: the jobs submitted since the previous sample."""
    previous = float("-inf")
    for sample in run.samples:
        window = [ms for t, ms in run.latencies if previous < t <= sample.t]
        sample.p50 = statistics.median(window) if window else None
        sample.p99 = percentile(window, 0.99)
        previous = sample.t


def warm_rss(run: SoakRun, index: int) -> list[float]:
    """Main + children RSS of worker `index` in the samples where it is warm."""
    starts = run.starts.get(run.workers[index], [])
    out = []
    for sample in run.samples:
        last_start = max((s for s in starts if s <= sample.t), default=float("-inf"))
        if sample.t >= run.warmup_s and sample.t - last_start >= RESTART_WARMUP_S:
            main, children = sample.rss[index]
            if main:
                out.append(main + children)
    return out


def rss_target(run: SoakRun) -> tuple[str, bool | None]:
    parts, verdicts = [], []
    for index, name in enumerate(run.workers):
        values = warm_rss(run, index)
        if len(values) < 2:
            parts.append(f"{name}: {len(values)} warm sample(s)")
            continue
        spread = (max(values) - min(values)) / min(values)
        verdicts.append(spread <= RSS_SPREAD)
        parts.append(
            f"{name}: {spread:.1%} ({min(values):.0f}-{max(values):.0f} MiB, {len(values)} samples)"
        )
    return "; ".join(parts), (all(verdicts) if verdicts else None)


def redis_target(run: SoakRun) -> tuple[str, bool | None]:
    third = run.duration_s / 3
    middle = [s.redis_mib for s in run.samples if third <= s.t < 2 * third and s.redis_mib]
    last = [s.redis_mib for s in run.samples if s.t >= 2 * third and s.redis_mib]
    if not middle or not last:
        return "not enough samples", None
    ratio = max(last) / max(middle)
    text = f"last third max {max(last):.1f} MiB / middle third max {max(middle):.1f} = {ratio:.2f}"
    return text, ratio <= REDIS_GROWTH


def p99_target(run: SoakRun) -> tuple[str, bool | None]:
    window = run.window_s
    first = [ms for t, ms in run.latencies if 0 <= t < window]
    last = [ms for t, ms in run.latencies if run.duration_s - window <= t <= run.duration_s]
    p_first, p_last = percentile(first, 0.99), percentile(last, 0.99)
    if not p_first or p_last is None:
        return "not enough jobs", None
    ratio = p_last / p_first
    text = f"last {window / 60:g} min {p_last:.0f} ms / first {p_first:.0f} ms = {ratio:.2f}"
    return text, ratio <= P99_RATIO


def jobs_target(run: SoakRun) -> tuple[str, bool | None]:
    acc = run.accounting
    assert acc is not None
    text = (
        f"{acc.delivered:,} of {acc.submitted:,} delivered; missing {len(acc.missing)}, "
        f"unexpected {len(acc.unexpected)}, abandoned {len(acc.abandoned)}"
    )
    return text, acc.complete


def targets(run: SoakRun) -> list[tuple[str, str, bool | None]]:
    return [
        (
            f"worker RSS (main + children) after warm-up flat within {RSS_SPREAD:.0%}",
            *rss_target(run),
        ),
        (
            f"Redis used_memory levels off (last third ≤ {REDIS_GROWTH} x middle)",
            *redis_target(run),
        ),
        (f"p99 latency, last window ≤ {P99_RATIO} x first", *p99_target(run)),
        ("every job accounted for", *jobs_target(run)),
    ]


# --- text ------------------------------------------------------------------------------------


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _num(value: float | int | None, fmt: str = "{:,}") -> str:
    return "-" if value is None else fmt.format(value)


def samples_table(run: SoakRun) -> list[str]:
    heads = [f"{name} main / children MiB" for name in run.workers]
    lines = [
        "| t s | " + " | ".join(heads) + " | Redis MiB | outbox | keys | submitted | "
        "delivered | p50 ms | p99 ms |",
        "| ---: | " + " | ".join("---:" for _ in heads) + " | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: |",
    ]
    for s in run.samples:
        rss = " | ".join(f"{main:.0f} / {children:.0f}" for main, children in s.rss)
        lines.append(
            f"| {s.t:.0f} | {rss} | {_mib(s.redis_mib)} | {_num(s.outbox)} | {_num(s.keys)} | "
            f"{s.submitted:,} | {s.delivered:,} | {_num(s.p50, '{:.0f}')} | "
            f"{_num(s.p99, '{:.0f}')} |"
        )
    return lines


def accounting_lines(acc: Accounting) -> list[str]:
    def ids(values: list[str]) -> str:
        if not values:
            return ""
        return ": " + ", ".join(values[:20]) + (" ..." if len(values) > 20 else "")

    statuses = ", ".join(f"{k} {v:,}" for k, v in sorted(acc.statuses.items()))
    return [
        f"- submitted {acc.submitted:,} distinct job ids; delivered to the sink {acc.delivered:,}",
        f"- missing {len(acc.missing)}{ids(acc.missing)}",
        f"- unexpected (delivered, never submitted) {len(acc.unexpected)}{ids(acc.unexpected)}",
        f"- submissions given up {len(acc.abandoned)}{ids(acc.abandoned)}; "
        f"failed submission attempts tried again {acc.retries:,}",
        f"- duplicate deliveries (at-least-once; the receiver dedupes on Idempotency-Key): "
        f"{acc.duplicate_deliveries:,} over {acc.duplicate_ids:,} ids; "
        f"Idempotency-Key not the job id: {acc.bad_keys}",
        f"- report statuses: {statuses}",
    ]


def settings_lines(run: SoakRun) -> list[str]:
    env = ", ".join(f"`{k}={v}`" for k, v in run.settings.items())
    faults = "; ".join(f"{e.t:.0f} s {e.label}" for e in run.events) or "none"
    return [
        f"- fleet: {len(run.workers)} `celery -A bot worker -c 2` (prefork), one "
        "`python -m bot.cli.relay` to a loopback HTTP sink (answers 200), a private "
        "redis-server (AOF, appendfsync everysec, noeviction, maxmemory 1gb)",
        f"- settings: {env}",
        f"- job: `{run.op}`; capacity measured {run.capacity:,.0f} jobs/s (flood, 30 s); "
        f"offered {run.rate:,.0f} jobs/s ({run.rate / run.capacity:.0%}) from one thread",
        f"- faults (s since steady load began): {faults}",
        f"- samples every {run.sample_s:g} s; RSS warm-up: the first {run.warmup_s:.0f} s and "
        f"{RESTART_WARMUP_S:.0f} s after a worker's restart; latency windows "
        f"{run.window_s:.0f} s",
    ]


def report(run: SoakRun, date: str, plot_name: str | None) -> str:
    assert run.accounting is not None
    rows = ["| target | measured | verdict |", "| --- | --- | --- |"]
    rows += [f"| {name} | {text} | {verdict(ok)} |" for name, text, ok in targets(run)]
    lines = [
        f"Measured {date} by `python bench/soak.py --minutes {run.minutes:g}` "
        f"({run.wall_s / 60:.1f} min in all).",
        "",
        *settings_lines(run),
        "",
        *([f"![soak: RSS, Redis memory, outbox, latency]({plot_name})", ""] if plot_name else []),
        *rows,
        "",
        "Every job:",
        "",
        *accounting_lines(run.accounting),
        "",
        *samples_table(run),
    ]
    return "\n".join(lines)


# --- plot ------------------------------------------------------------------------------------


def plot(run: SoakRun, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s.t / 60 for s in run.samples]
    fig, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    for index, name in enumerate(run.workers):
        axes[0].plot(minutes, [s.rss[index][0] or None for s in run.samples], label=f"{name} main")
        children = [s.rss[index][1] or None for s in run.samples]
        axes[0].plot(minutes, children, "--", label=f"{name} children")
    _panel(axes[0], "worker RSS (MiB)")
    axes[1].plot(minutes, [s.redis_mib for s in run.samples], label="used_memory")
    _panel(axes[1], "Redis used_memory (MiB)")
    axes[2].plot(minutes, [s.outbox for s in run.samples], label="XLEN bot:outbox")
    axes[2].plot(minutes, [s.keys for s in run.samples], ":", label="keys (DBSIZE)")
    _panel(axes[2], "outbox length, keys")
    axes[3].plot(minutes, [s.p50 for s in run.samples], label="p50")
    axes[3].plot(minutes, [s.p99 for s in run.samples], label="p99")
    axes[3].set_yscale("log")
    _panel(axes[3], "latency, submit to sink (ms)", from_zero=False)
    axes[3].set_xlabel("minutes of steady load")
    for ax in axes:
        _mark_events(ax, run.events, labelled=ax is axes[0])
    fig.suptitle(f"bot soak: {run.minutes:g} min at {run.rate:,.0f} jobs/s")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _panel(ax: Any, title: str, *, from_zero: bool = True) -> None:
    ax.set_title(title, fontsize=10, loc="left")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    if from_zero:
        ax.set_ylim(bottom=0)


EVENT_STYLE = {"kill": ("tab:red", "--"), "redis": ("tab:purple", "-."), "exit": ("black", ":")}


def _mark_events(ax: Any, events: list[Event], *, labelled: bool) -> None:
    """A vertical line at each fault; on the top panel, with its label."""
    for event in events:
        color, style = EVENT_STYLE.get(event.kind, ("gray", ":"))
        ax.axvline(event.t / 60, color=color, linestyle=style, alpha=0.7)
        if labelled:
            ax.annotate(
                event.label,
                (event.t / 60, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(2, -2),
                textcoords="offset points",
                fontsize=7,
                color=color,
                rotation=90,
                va="top",
            )
