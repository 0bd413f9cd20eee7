"""Turn the raw results (benchmarks/results/latest.json) into latest.md, PNG charts and a summary.

``python -m benchmarks.report [results.json]`` re-renders the report without re-running anything.
Medians over rounds everywhere; ratios and differences to the baseline are taken per round (each
round ran the variants back to back) and their median reported.
"""

from __future__ import annotations

import json
import statistics
import sys
import textwrap
from pathlib import Path
from typing import Any

__all__ = ["goals", "typed_key", "write"]

BASELINE = "baseline"
POOL_BASELINE = "bare"
POOL_EFFICIENCY = 0.90  # the pool's CPU per message at most bare's / 0.9
DEDUP_MAX_B = 200  # bytes of de-duplicator state per stream
KIB = 1024
Results = dict[str, Any]


# ------------------------------------------------------------------------------------------ helpers


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def field(row: dict[str, Any] | None, name: str) -> list[float]:
    if not row:
        return []
    return [r[name] for r in row.get("runs", []) if r.get(name) is not None]


def by_round(row: dict[str, Any] | None, name: str) -> dict[int, float]:
    if not row:
        return {}
    return {r["round"]: r[name] for r in row.get("runs", []) if r.get(name) is not None}


def paired(a: dict[str, Any] | None, b: dict[str, Any] | None, name: str, op: str) -> float | None:
    """Median over rounds of ``a op b`` (``/`` or ``-``) for rounds where both ran."""
    ra, rb = by_round(a, name), by_round(b, name)
    rounds = sorted(set(ra) & set(rb))
    if not rounds:
        return None
    if op == "/":
        return statistics.median(ra[r] / rb[r] for r in rounds)
    return statistics.median(ra[r] - rb[r] for r in rounds)


def has_runs(rows: dict[str, Any], key: str) -> bool:
    return bool(rows.get(key, {}).get("runs"))


def typed_key(rows: dict[str, Any]) -> str:
    """The wsclient row the goals are judged on: typed dispatch when it exists, else raw+validate."""
    return "wsclient-typed-sync" if has_runs(rows, "wsclient-typed-sync") else "wsclient-raw-sync"


def fmt(value: float | None, spec: str = ".2f", unit: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{unit}"


def ms(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:,.0f} ms"


# ------------------------------------------------------------------------------------------ goals


def _goal(
    gid: str, text: str, target: str, measured: str, met: bool | None, margin: str, basis: str = ""
) -> dict[str, Any]:
    return {
        "id": gid,
        "goal": text,
        "target": target,
        "measured": measured,
        "met": met,
        "margin": margin,
        "basis": basis,
    }


def goals(results: Results) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    tp = results.get("throughput", {}).get("rows", {})
    if tp and has_runs(tp, BASELINE):
        for key, goal_id, suffix, target in (
            (typed_key(tp), "throughput_ratio", "", 0.95),
            ("wsclient-typed-async", "throughput_ratio_async", ", async handler", 0.95),
            ("wsclient-picows-typed-sync", "throughput_ratio_picows", " [picows transport]", 0.90),
        ):
            if not has_runs(tp, key):
                continue
            ratio = paired(tp[key], tp[BASELINE], "rate", "/")
            cost = paired(tp[key], tp[BASELINE], "us_per_msg", "-")
            name = tp[key]["label"]
            if ratio is not None:
                out.append(
                    _goal(
                        goal_id,
                        f"typed throughput{suffix}",
                        f"≥ {target:.2f}× baseline",
                        f"{ratio:.3f}×",
                        ratio >= target,
                        f"{(ratio - target):+.3f}× vs target",
                        name,
                    )
                )
            if cost is not None and not suffix:
                out.append(
                    _goal(
                        "wrapper_cost",
                        "wrapper cost per message",
                        "≤ 1.00 µs/msg",
                        f"{cost:+.2f} µs/msg",
                        cost <= 1.0,
                        f"{1.0 - cost:+.2f} µs headroom" if cost <= 1.0 else f"{cost - 1.0:.2f} µs over",
                        name,
                    )
                )
    # The fast transport's own goals: twice the websockets baseline, and 0.9x of bare picows doing
    # the same validation (what is left for wsclient to cost on top of the faster transport).
    fast = "wsclient-picows-typed-sync"
    if tp and has_runs(tp, fast) and has_runs(tp, BASELINE):
        ratio = paired(tp[fast], tp[BASELINE], "rate", "/")
        if ratio is not None:
            out.append(
                _goal(
                    "picows_vs_baseline",
                    "typed throughput [picows transport], fast-backend goal",
                    "≥ 2.00× baseline",
                    f"{ratio:.3f}×",
                    ratio >= 2.0,
                    f"{(ratio - 2.0):+.3f}× vs target",
                    tp[fast]["label"],
                )
            )
        if has_runs(tp, "picows"):
            vs_bare = paired(tp[fast], tp["picows"], "rate", "/")
            if vs_bare is not None:
                out.append(
                    _goal(
                        "picows_vs_bare_picows",
                        "typed throughput [picows transport] vs bare picows + validate_json",
                        "≥ 0.95× bare picows",
                        f"{vs_bare:.3f}×",
                        vs_bare >= 0.95,
                        f"{(vs_bare - 0.95):+.3f}× vs target",
                        tp[fast]["label"],
                    )
                )
    lat = results.get("latency", {}).get("rows", {})
    if lat and has_runs(lat, BASELINE):
        for key, suffix in ((typed_key(lat), ""), ("wsclient-picows-typed-sync", " [picows transport]")):
            if not has_runs(lat, key):
                continue
            diff = paired(lat[key], lat[BASELINE], "p99_us", "-")
            if diff is None:
                continue
            out.append(
                _goal(
                    "latency_p99" + ("_picows" if suffix else ""),
                    f"p99 added latency at 20k msgs/s{suffix}",
                    "≤ baseline + 100 µs",
                    f"{diff:+.0f} µs vs baseline",
                    diff <= 100,
                    f"{100 - diff:+.0f} µs headroom" if diff <= 100 else f"{diff - 100:.0f} µs over",
                    lat[key]["label"],
                )
            )
    dl = results.get("deadlink", {})
    if dl:
        limit = dl["interval"] + dl["timeout"] + 0.05
        for key, suffix in (("wsclient", ""), ("wsclient-picows", " [picows transport]")):
            black = dl.get("blackhole", {}).get(key)
            if black and black.get("runs"):
                detect = field(black, "detect_s")
                worst = max(detect)
                out.append(
                    _goal(
                        "dead_detect" + ("_picows" if suffix else ""),
                        f"dead link declared (black hole){suffix}",
                        f"≤ I+T+50 ms = {limit * 1000:.0f} ms",
                        f"median {ms(med(detect))}, worst {ms(worst)}",
                        worst <= limit,
                        f"{(limit - worst) * 1000:+.0f} ms (worst round)",
                        "every round",
                    )
                )
                slack = [r["recover_s"] - r.get("first_delay_s", dl["first_delay"]) for r in black["runs"]]
                worst = max(slack)
                out.append(
                    _goal(
                        "dead_recover" + ("_picows" if suffix else ""),
                        f"first message after recovery (black hole){suffix}",
                        "≤ first backoff delay + 50 ms",
                        f"delay + {ms(med(slack))} median, + {ms(worst)} worst",
                        worst <= 0.05,
                        f"{(0.05 - worst) * 1000:+.0f} ms (worst round)",
                        f"first delay {dl['first_delay']} s, measured from the dead verdict",
                    )
                )
            restart = dl.get("restart", {}).get(key)
            if restart and restart.get("runs"):
                slack = field(restart, "attempt_to_first_s")
                if slack:
                    worst = max(slack)
                    out.append(
                        _goal(
                            "restart_recover" + ("_picows" if suffix else ""),
                            f"first message after server restart{suffix}",
                            "≤ 50 ms after the retry that finds the server back",
                            f"median {ms(med(slack))}, worst {ms(worst)}",
                            worst <= 0.05,
                            f"{(0.05 - worst) * 1000:+.0f} ms (worst round)",
                            "from the start of the successful attempt",
                        )
                    )
    out += pool_goals(results)
    out += bus_goals(results)
    mem = results.get("idle", {}).get("memory", {})
    for comp in ("off", "on"):
        w, b = mem.get(f"wsclient|{comp}"), mem.get(f"websockets|{comp}")
        mw, mb = med(field(w, "per_conn_kib")), med(field(b, "per_conn_kib"))
        if mw is None or mb is None:
            continue
        diff = mw - mb
        out.append(
            _goal(
                f"memory_{comp}",
                f"memory per idle connection, compression {comp}",
                "≤ bare websockets + 4 KiB",
                f"{mw:.1f} KiB vs {mb:.1f} KiB ({diff:+.1f} KiB)",
                diff <= 4.0,
                f"{4.0 - diff:+.1f} KiB headroom" if diff <= 4.0 else f"{diff - 4.0:.1f} KiB over",
                "1,000 connections, RSS delta / 1000",
            )
        )
    return out


def pool_goals(results: Results) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    pool = results.get("pool", {})
    tp = pool.get("throughput", {})
    if has_runs(tp, "pool") and has_runs(tp, POOL_BASELINE):
        base, row = tp[POOL_BASELINE], tp["pool"]
        # Efficiency: bare's CPU per message over the pool's, per round (1.0: the pool costs nothing).
        eff = paired(base, row, "cpu_us_per_msg", "/")
        if eff is not None:
            out.append(
                _goal(
                    "pool_efficiency",
                    "pool: CPU per message, 100 streams over 4 connections, dedup on",
                    f"≥ {POOL_EFFICIENCY:.2f}× bare (CPU/msg ≤ bare ÷ {POOL_EFFICIENCY:g})",
                    f"{eff:.3f}× ({fmt(med(field(row, 'cpu_us_per_msg')))} vs "
                    f"{fmt(med(field(base, 'cpu_us_per_msg')))} µs/msg)",
                    eff >= POOL_EFFICIENCY,
                    f"{eff - POOL_EFFICIENCY:+.3f}× vs target",
                    row["label"],
                )
            )
    resub = pool.get("resubscribe", {})
    rows = resub.get("rows", {})
    runs = [r for row in rows.values() for r in row.get("runs", [])]
    if runs:
        tol = resub["tolerance"]
        worst = max(r["over_floor_s"] for r in runs)
        violations = sum(r["total_violations"] for r in runs)
        failed = sum(len(row.get("errors", [])) for row in rows.values())
        met = worst <= tol and violations == 0 and not failed
        margin = f"{(tol - worst) * 1000:+.0f} ms (worst run)"
        if violations or failed:
            margin += f"; {violations} violations, {failed} failed runs"
        out.append(
            _goal(
                "pool_resubscribe",
                f"pool: {resub['streams']:,} streams resubscribed after a venue restart "
                f"({resub['messages_per_second']} msg/s budget)",
                f"≤ floor + {tol:g} s, 0 violations",
                f"worst {worst * 1000:+.0f} ms vs floor, {violations} violations",
                met,
                margin,
                f"{len(rows)} layouts, every round",
            )
        )
    mem = pool.get("dedup", {})
    if mem.get("ok"):
        worst_b = max(mem["steady_b"], mem["after_overlap_b"])
        out.append(
            _goal(
                "dedup_memory",
                f"pool: de-duplicator state per stream ({mem['streams']:,} streams)",
                f"≤ {DEDUP_MAX_B} B/stream",
                f"{mem['steady_b']:.0f} B; {mem['after_overlap_b']:.0f} B after an overlap",
                worst_b <= DEDUP_MAX_B,
                f"{DEDUP_MAX_B - worst_b:+.0f} B (worst state)",
                "tracemalloc, key strings included",
            )
        )
    return out


BUS_NAMES = {"nats": "NATS JetStream", "redis": "Redis Streams"}


def bus_goals(results: Results) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    bus = results.get("bus", {})
    target = bus.get("goal", 0.8)
    for name, title in BUS_NAMES.items():
        tp = bus.get(name, {}).get("throughput", {})
        if not (has_runs(tp, "wsclient") and has_runs(tp, "bare")):
            continue
        ratio = paired(tp["wsclient"], tp["bare"], "rate", "/")
        if ratio is None:
            continue
        out.append(
            _goal(
                f"bus_{name}_throughput",
                f"bus: throughput into {title}, acknowledged",
                f"≥ {target:.2f}× bare",
                f"{ratio:.3f}× ({med(field(tp['wsclient'], 'rate')):,.0f} vs "
                f"{med(field(tp['bare'], 'rate')):,.0f} msgs/s)",
                ratio >= target,
                f"{ratio - target:+.3f}× vs target",
                tp["wsclient"]["label"],
            )
        )
    return out


# ------------------------------------------------------------------------------------------ charts


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "figure.dpi": 110})
    return plt


def _color(key: str) -> str:
    if key == BASELINE:
        return "#555555"
    if key.startswith("wsclient"):
        return "#1f77b4"
    return "#ff7f0e"


def chart_throughput(results: Results, path: Path) -> bool:
    tp = results.get("throughput", {}).get("rows", {})
    base = tp.get(BASELINE)
    if not base or not base.get("runs"):
        return False
    rows = [(k, r) for k, r in tp.items() if r.get("runs")]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.8))
    labels, ratios, colors, notes = [], [], [], []
    for key, row in rows:
        ratio = paired(row, base, "rate", "/") or 0.0
        rate = med(field(row, "rate")) or 0.0
        labels.append(row["label"])
        ratios.append(ratio)
        colors.append(_color(key))
        notes.append(f"{rate / 1000:,.0f}k/s  ({ratio:.2f}×)")
    y = list(range(len(rows)))[::-1]
    ax.barh(y, ratios, color=colors)
    for yi, ratio, note in zip(y, ratios, notes, strict=True):
        ax.text(ratio + 0.02, yi, note, va="center", fontsize=9)
    ax.set_yticks(y, labels)
    ax.axvline(1.0, color="#555555", lw=1, ls="-")
    ax.axvline(0.9, color="#d62728", lw=1, ls="--")
    ax.text(0.88, len(rows) - 0.45, "goal ≥ 0.9×", color="#d62728", ha="right", va="center", fontsize=8)
    ax.set_ylim(-0.6, len(rows) - 0.2)
    ax.set_xlim(0, max(ratios) * 1.35)
    ax.set_xlabel("× baseline (websockets + validate_json); median of per-round ratios")
    n = results["throughput"].get("n", 0)
    ax.set_title(f"Throughput, {n:,} market-data frames of ~160 B per run")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _median_round(row: dict[str, Any]) -> dict[str, Any]:
    runs = sorted(row["runs"], key=lambda r: r["p99_us"])
    return runs[len(runs) // 2]


def chart_latency(results: Results, path: Path) -> bool:
    lat = results.get("latency", {}).get("rows", {})
    rows = [(k, r) for k, r in lat.items() if r.get("runs")]
    if not rows:
        return False
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 5.0))
    styles = ["-", "--", "-.", ":", (0, (5, 1))]
    for i, (key, row) in enumerate(rows):
        cdf = _median_round(row)["cdf"]
        xs = [max(v, 1.0) for v, _ in cdf]
        qs = [q for _, q in cdf]
        kw = {"color": _color(key), "ls": styles[i % len(styles)], "lw": 1.6, "label": row["label"]}
        ax1.plot(xs, qs, **kw)
        ax2.plot(xs, [max(1 - q, 1e-4) for q in qs], **kw)
    ax1.set_xscale("log")
    ax1.set_xlabel("added latency: handler time − server write stamp (µs)")
    ax1.set_ylabel("fraction of messages ≤ x")
    ax1.set_title("CDF")
    ax1.grid(True, which="both", alpha=0.3)
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_ylim(1e-4, 1.05)
    ax2.set_xlabel("added latency (µs)")
    ax2.set_ylabel("fraction of messages > x")
    ax2.set_title("tail (p99 at 1e-2, p99.9 at 1e-3)")
    ax2.axhline(1e-2, color="#999999", lw=0.8, ls=":")
    ax2.axhline(1e-3, color="#999999", lw=0.8, ls=":")
    ax2.grid(True, which="both", alpha=0.3)
    handles, names = ax1.get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=3, fontsize=8, frameon=False)
    rate = results["latency"].get("rate", 0)
    fig.suptitle(f"Added latency at a steady {rate:,} msgs/s (batches every ~1 ms; median round shown)")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return True


def chart_deadlink(results: Results, path: Path) -> bool:
    dl = results.get("deadlink", {})
    scenarios = [(s, dl.get(s, {})) for s in ("blackhole", "restart")]
    if not any(any(r.get("runs") for r in rows.values()) for _, rows in scenarios):
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.0))
    titles = {
        "blackhole": "black-holed link (no FIN), path back at once",
        "restart": "server killed and restarted on the same port",
    }
    for ax, (scenario, rows) in zip(axes, scenarios, strict=True):
        keys = [k for k, r in rows.items() if r.get("runs")]
        detect = [med(field(rows[k], "detect_s")) or 0.0 for k in keys]
        total = [med(field(rows[k], "total_s")) or 0.0 for k in keys]
        x = list(range(len(keys)))
        ax.bar([i - 0.2 for i in x], detect, 0.4, label="declared dead", color="#9467bd")
        ax.bar([i + 0.2 for i in x], total, 0.4, label="first message on the new connection", color="#2ca02c")
        for i in x:
            ax.text(i - 0.2, detect[i], f"{detect[i]:.2f}", ha="center", va="bottom", fontsize=8)
            ax.text(i + 0.2, total[i], f"{total[i]:.2f}", ha="center", va="bottom", fontsize=8)
        short = {"wsclient": "wsclient", "wsclient-picows": "wsclient\n(picows)"}
        ax.set_xticks(x, [short.get(k, k) for k in keys])
        ax.set_ylabel("seconds after the " + ("cut" if scenario == "blackhole" else "kill") + " (median)")
        ax.set_title(titles[scenario])
        if scenario == "blackhole":
            limit = dl["interval"] + dl["timeout"] + 0.05
            ax.axhline(
                limit, color="#d62728", ls="--", lw=1, label=f"goal: dead within I+T+50 ms = {limit:.2f} s"
            )
        ax.set_ylim(0, max([*detect, *total, 0.1]) * 1.12)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle(f"Dead-link detection and recovery (heartbeat I={dl['interval']} s, T={dl['timeout']} s)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return True


def chart_memory(results: Results, path: Path) -> bool:
    mem = results.get("idle", {}).get("memory", {})
    variants: list[str] = []
    for key in mem:
        v = key.split("|")[0]
        if v not in variants and any(mem.get(f"{v}|{c}", {}).get("runs") for c in ("off", "on")):
            variants.append(v)
    if not variants:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.2))
    x = list(range(len(variants)))
    for offset, comp, color in ((-0.2, "off", "#17becf"), (0.2, "on", "#bcbd22")):
        values = [med(field(mem.get(f"{v}|{comp}"), "per_conn_kib")) for v in variants]
        xs = [i + offset for i, val in zip(x, values, strict=True) if val is not None]
        ys = [val for val in values if val is not None]
        ax.bar(xs, ys, 0.4, label=f"compression {comp}", color=color)
        for xi, yi in zip(xs, ys, strict=True):
            ax.text(xi, yi, f"{yi:.1f}", ha="center", va="bottom", fontsize=8)
    for comp, offset in (("off", -0.2), ("on", 0.2)):
        base = med(field(mem.get(f"websockets|{comp}"), "per_conn_kib"))
        if base is not None and "wsclient" in variants:
            i = variants.index("wsclient")
            ax.plot([i + offset - 0.2, i + offset + 0.2], [base + 4, base + 4], color="#d62728", lw=2)
    ax.plot([], [], color="#d62728", lw=2, label="goal: bare websockets + 4 KiB")
    names = [mem.get(f"{v}|off", mem.get(f"{v}|on", {})).get("label", v) for v in variants]
    ax.set_xticks(x, [textwrap.fill(name, 24) for name in names], fontsize=8)
    ax.set_ylabel("KiB of RSS per idle connection (median)")
    conns = results["idle"].get("conns", 0)
    ax.set_title(f"Memory per idle connection ({conns:,} connections, RSS delta / {conns:,})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def chart_pool(results: Results, path: Path) -> bool:
    pool = results.get("pool", {})
    tp = pool.get("throughput", {})
    rows = [(k, r) for k, r in tp.items() if r.get("runs")]
    resub = pool.get("resubscribe", {}).get("rows", {})
    cases = [(k, r) for k, r in resub.items() if r.get("runs")]
    if not rows and not cases:
        return False
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    if rows:
        cpu = [med(field(r, "cpu_us_per_msg")) or 0.0 for _, r in rows]
        colors = ["#555555" if k == POOL_BASELINE else "#1f77b4" for k, _ in rows]
        x = list(range(len(rows)))
        ax1.bar(x, cpu, color=colors)
        for xi, v in zip(x, cpu, strict=True):
            ax1.text(xi, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
        base = med(field(tp.get(POOL_BASELINE), "cpu_us_per_msg"))
        top = max(cpu)
        if base is not None:
            limit = base / POOL_EFFICIENCY
            top = max(top, limit)
            ax1.axhline(limit, color="#d62728", ls="--", lw=1, label=f"goal: ≤ bare ÷ {POOL_EFFICIENCY:g}")
            ax1.legend(fontsize=8, loc="upper left")
        ax1.set_ylim(0, top * 1.2)
        ax1.set_xticks(x, [textwrap.fill(r["label"], 22) for _, r in rows], fontsize=7)
        ax1.set_ylabel("client CPU µs per message (median)")
        ax1.set_title(f"{pool.get('n', 0):,} trades on {pool.get('streams', 0)} streams")
    if cases:
        x = list(range(len(cases)))
        floor = [r["runs"][0]["floor"]["floor_s"] for _, r in cases]
        measured = [med(field(r, "resubscribe_s")) or 0.0 for _, r in cases]
        ax2.bar([i - 0.2 for i in x], floor, 0.4, label="floor the limits allow", color="#bbbbbb")
        ax2.bar([i + 0.2 for i in x], measured, 0.4, label="measured (median)", color="#2ca02c")
        for i in x:
            ax2.text(i + 0.2, measured[i], f"{measured[i]:.2f}", ha="center", va="bottom", fontsize=8)
        names = [k.replace("|", " per conn.\nbatch ") for k, _ in cases]
        ax2.set_xticks(x, names, fontsize=8)
        ax2.set_ylabel("seconds from the restart to all streams subscribed")
        ax2.set_title("resubscribe 1,000 streams under 5 msg/s per connection")
        ax2.legend(fontsize=8)
    fig.suptitle("Pool")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------------------ markdown


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _skips(rows: dict[str, Any]) -> list[str]:
    out = []
    for row in rows.values():
        if row.get("skipped"):
            out.append(f"- *{row['label']}*: skipped — {row['skipped']}")
        for err in row.get("errors", []):
            out.append(f"- *{row['label']}*: round {err['round']} failed — {err['error']}")
    return out


def md_throughput(results: Results) -> list[str]:
    tp = results["throughput"]
    rows = tp["rows"]
    base = rows.get(BASELINE)
    server = tp.get("server", {})
    lines = [
        "## 1. Throughput",
        "",
        f"{tp['n']:,} frames per run (mixed book updates, trades and tickers, "
        f"{server.get('avg_payload', 0):.0f} B average payload, Decimal prices as strings, then an end "
        "marker), written by the server in 256 KiB blocks straight after the handshake. Rate = messages / "
        "time from the first to the last message handled. Typed variants validate each frame once "
        "against the same discriminated union on `type` over Trade/Book/Ticker/End (bare variants and "
        "wsclient's raw+validate rows through `TypeAdapter.validate_json`; wsclient's typed rows build "
        "the same union and call pydantic-core's validator directly, skipping that wrapper) and call "
        "the same handler (count, time the end marker). Ratios and Δ are per-round, median.",
        "",
    ]
    table = []
    for key, row in rows.items():
        rates = field(row, "rate")
        if not rates:
            continue
        ratio = paired(row, base, "rate", "/")
        delta = paired(row, base, "us_per_msg", "-")
        table.append(
            [
                f"**{row['label']}**" if key == BASELINE else row["label"],
                f"{med(rates):,.0f}",
                f"{min(rates):,.0f} – {max(rates):,.0f}",
                fmt(ratio, ".3f", "×"),
                fmt(med(field(row, "us_per_msg")), ".2f"),
                "–" if key == BASELINE else fmt(delta, "+.2f"),
                fmt(med(field(row, "server_cpu_pct")), ".1f", " %"),
            ]
        )
    lines += _table(
        [
            "variant",
            "msgs/s (median)",
            "range",
            "× baseline",
            "µs/msg",
            "Δ µs/msg vs baseline",
            "server CPU",
        ],
        table,
    )
    lines += ["", "![throughput relative to the baseline](throughput.png)", ""]
    lines += _skips(rows)
    return lines


def md_latency(results: Results) -> list[str]:
    lat = results["latency"]
    rows = lat["rows"]
    base = rows.get(BASELINE)
    lines = [
        "## 2. Added latency",
        "",
        f"The server writes {lat['rate']:,} msgs/s for {lat['seconds']:g} s in small batches every ~1 ms, "
        "each frame stamped with `time.monotonic_ns()` just before its batch is written (CLOCK_MONOTONIC "
        "is system-wide on Linux). The handler records `monotonic_ns()` − stamp after validation; the "
        f"first {lat['warmup']:g} s are dropped. Percentiles are medians over rounds; Δp99 is per round. "
        "Frames of one batch are handled one after the other, so the later ones in a batch wait for the "
        "earlier ones' validation: that is in the baseline too.",
        "",
    ]
    table = []
    for key, row in rows.items():
        if not row.get("runs"):
            continue
        diff = paired(row, base, "p99_us", "-")
        table.append(
            [
                f"**{row['label']}**" if key == BASELINE else row["label"],
                fmt(med(field(row, "p50_us")), ",.0f"),
                fmt(med(field(row, "p90_us")), ",.0f"),
                fmt(med(field(row, "p99_us")), ",.0f"),
                fmt(med(field(row, "p999_us")), ",.0f"),
                fmt(med(field(row, "max_us")), ",.0f"),
                "–" if key == BASELINE else fmt(diff, "+,.0f"),
                fmt(med(field(row, "server_cpu_pct")), ".1f", " %"),
            ]
        )
    lines += _table(
        ["variant", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs", "Δp99 vs baseline", "server CPU"],
        table,
    )
    lines += ["", "![latency CDF](latency_cdf.png)", ""]
    lines += _skips(rows)
    return lines


def md_deadlink(results: Results) -> list[str]:
    dl = results["deadlink"]
    lines = [
        "## 3. Dead-link detection and recovery",
        "",
        f"Heartbeat interval I = {dl['interval']} s, timeout T = {dl['timeout']} s; wsclient reconnects "
        f"after {dl['first_delay']} s (jitter 0 so the goal is exact). The feed sends 1,000 msgs/s after "
        "a subscribe; the first message of every connection has `seq` 0, which is how the first message "
        "after a reconnect + resubscribe is recognised. Each run is a fresh process with its own server; "
        "the cut comes at a random moment 1–2 s after the first message (the same moment for every "
        "variant in a round).",
        "",
        "**Black hole**: a TCP proxy in the client process stops forwarding in both directions and sends "
        "no FIN; connections opened after the cut pass (the path is back at once). *Declared dead* is when "
        "the client reports the link gone (wsclient: the fatal `HeartbeatMissed`/`Disconnected` event; "
        "websockets: `recv` raising `ConnectionClosed`; aiohttp: `receive()` returning a close/error or "
        "timing out).",
        "",
    ]
    rows = dl.get("blackhole", {})
    table = []
    for row in rows.values():
        if not row.get("runs"):
            continue
        detect = field(row, "detect_s")
        table.append(
            [
                row["label"],
                ms(med(detect)),
                f"{ms(min(detect))} – {ms(max(detect))}",
                ms(med(field(row, "recover_s"))),
                ms(med(field(row, "total_s"))),
            ]
        )
    lines += _table(
        ["variant", "declared dead (median)", "range", "dead → first message", "cut → first message"],
        table,
    )
    lines += _skips(rows)
    lines += [
        "",
        "**Server restart**: the server process is killed (SIGKILL: the kernel closes its sockets) and "
        "started again on the same port; *server down* is kill → the new server listening.",
        "",
    ]
    rows = dl.get("restart", {})
    table = []
    for row in rows.values():
        if not row.get("runs"):
            continue
        table.append(
            [
                row["label"],
                ms(med(field(row, "detect_s"))),
                ms(med(field(row, "server_down_s"))),
                ms(med(field(row, "after_ready_s"))),
                ms(med(field(row, "attempt_to_first_s"))),
                ms(med(field(row, "total_s"))),
            ]
        )
    lines += _table(
        [
            "variant",
            "declared dead",
            "server down",
            "server back → first message",
            "successful attempt → first message",
            "kill → first message",
        ],
        table,
    )
    lines += [
        "",
        "websockets' `connect()` loop retries a failed connect after its own backoff (first delay "
        "U(0, 5 s), then 3.1 s × 1.618ⁿ), hence its restart figures; after a black hole it waits "
        "`close_timeout` (10 s by default) for a close handshake on a link known to be dead.",
        "",
    ]
    lines += _skips(rows)
    lines += ["", "![dead-link detection and recovery](deadlink.png)", ""]
    return lines


def md_idle(results: Results) -> list[str]:
    idle = results["idle"]
    mem, cpu = idle["memory"], idle["cpu"]
    lines = [
        "## 4. Memory and idle cost",
        "",
        f"RSS of the client process (VmRSS) after 20 warm-up connections and after {idle['conns']:,} more, "
        "each of which received one welcome frame (compressed when permessage-deflate was negotiated), "
        f"divided by {idle['conns']:,}. wsclient: one `Client` per connection (default heartbeat); bare "
        "websockets: `connect()` (keepalive on, its default) plus a task reading the connection.",
        "",
    ]
    table = []
    for key, row in mem.items():
        values = field(row, "per_conn_kib")
        if not values:
            continue
        variant, comp = key.split("|")
        base = med(field(mem.get(f"websockets|{comp}"), "per_conn_kib"))
        delta = None if base is None or variant == "websockets" else med(values) - base
        table.append(
            [
                row["label"],
                comp,
                f"{med(values):.1f}",
                f"{min(values):.1f} – {max(values):.1f}",
                fmt(delta, "+.1f"),
                fmt(med(field(row, "open_s")), ".2f", " s"),
            ]
        )
    lines += _table(
        ["variant", "compression", "KiB / connection", "range", "Δ vs websockets", f"open {idle['conns']:,}"],
        table,
    )
    lines += _skips(mem)
    lines += [
        "",
        f"CPU of {idle['conns']:,} idle connections with a 1 s heartbeat (wsclient `Heartbeat(interval=1)`; "
        f"websockets `ping_interval=1`), process CPU time over {idle['cpu_window']:g} s:",
        "",
    ]
    table = []
    for row in cpu.values():
        pct = field(row, "cpu_pct")
        if not pct:
            continue
        per = med(pct) / 100 / idle["conns"] * 1e6  # µs of CPU per connection per second = per ping
        table.append(
            [row["label"], f"{med(pct):.1f} %", f"{min(pct):.1f} – {max(pct):.1f} %", f"{per:.0f} µs"]
        )
    lines += _table(["variant", "CPU (one core = 100 %)", "range", "CPU per connection per second"], table)
    lines += _skips(cpu)
    lines += ["", "![memory per idle connection](memory.png)", ""]
    return lines


def md_pool(results: Results) -> list[str]:
    pool = results["pool"]
    lines = ["## 5. Pool", ""]
    tp = pool.get("throughput", {})
    if tp:
        base = tp.get(POOL_BASELINE)
        lines += [
            f"**Throughput.** The server's `/trades` path plays a venue: {pool['streams']} trade streams "
            f"(`sNN@trade`, Binance-shaped trades of ~160 B, ids contiguous from 1), {pool['per_stream']:,} "
            f"trades each, {pool['n']:,} in all. A connection subscribes with "
            '`{"method":"SUBSCRIBE","params":[...],"id":n}`; once the run\'s connections together '
            "subscribed to every stream, each gets the trades of its own streams, interleaved, "
            "pre-encoded and written in 256 KiB blocks, all connections at the same moment. Every "
            "variant validates each trade into the same pydantic `Trade` model (Decimal price and "
            "quantity) and calls the same handler, which counts and checks that each stream's ids follow "
            "on (nothing lost, copied or reordered, checked at the end of every run). The pool has "
            "`streams_per_connection=25`, one subscribe message per connection. *CPU µs/msg* is the "
            "client process's `time.process_time()` from its first message to its last, divided by the "
            "messages: the goal is on it rather than on the rate, which a machine shared with other "
            "jobs blurs more. *Efficiency* is bare's CPU per message over the variant's, per round "
            "(median).",
            "",
        ]
        table = []
        for key, row in tp.items():
            rates = field(row, "rate")
            if not rates:
                continue
            cpu = field(row, "cpu_us_per_msg")
            table.append(
                [
                    f"**{row['label']}**" if key == POOL_BASELINE else row["label"],
                    f"{med(rates):,.0f}",
                    f"{min(rates):,.0f} – {max(rates):,.0f}",
                    fmt(med(cpu), ".2f"),
                    f"{min(cpu):.2f} – {max(cpu):.2f}",
                    "–"
                    if key == POOL_BASELINE
                    else fmt(paired(base, row, "cpu_us_per_msg", "/"), ".3f", "×"),
                    "–" if key == POOL_BASELINE else fmt(paired(row, base, "rate", "/"), ".3f", "×"),
                    fmt(med([100 * v for v in field(row, "cpu_share")]), ".0f", " %"),
                    fmt(med(field(row, "server_cpu_pct")), ".1f", " %"),
                ]
            )
        lines += _table(
            [
                "variant",
                "msgs/s (median)",
                "range",
                "CPU µs/msg",
                "CPU range",
                "efficiency vs bare",
                "rate × bare",
                "client CPU busy",
                "server CPU",
            ],
            table,
        )
        lines += ["", *_skips(tp), ""]
    resub = pool.get("resubscribe", {})
    rows = resub.get("rows", {})
    if rows:
        lines += [
            f"**Resubscribe.** A pool of {resub['streams']:,} streams against an in-process `VenueServer` "
            f"(same process as the pool: this is a time, not a CPU measure) enforcing "
            f"{resub['messages_per_second']} messages per second per connection (pings counted) and "
            f"{resub['connects_per_window']} connects per {resub['connect_window']:g} s; the pool's "
            f"`VenueLimits` say the same, with `heartbeat_reserve=1` and the default 10 % margin; "
            f"`Reconnect(initial_delay={resub['backoff']:g}, jitter=0)`. The streams trade once a second "
            "each. Once every stream is subscribed and the windows are empty again, the venue restarts "
            "(every connection reset, listening again at once); the time runs until the venue sees every "
            "stream subscribed again, once. The **floor** is what the limits allow: each shard replays "
            "⌈streams / batch⌉ subscribe messages, of which a new connection may send "
            "`messages_per_second − reserve` at once and as many again per window × (1 + margin); each "
            "shard first waits the backoff, then its turn at the connect gate (the gate's first slots "
            "going to the shards with the most messages); handshakes count as instant. Goal: every run "
            f"within floor + {resub['tolerance']:g} s (the handshakes, the event loop shared with the "
            "venue), with no violation at the venue.",
            "",
        ]
        table = []
        for row in rows.values():
            runs = row.get("runs", [])
            if not runs:
                continue
            fl = runs[0]["floor"]
            measured = field(row, "resubscribe_s")
            over = field(row, "over_floor_s")
            opened = [max(r["opened_after_s"]) for r in runs if r.get("opened_after_s")]
            table.append(
                [
                    row["label"],
                    f"{fl['shards']} × {fl['messages_per_shard']}",
                    f"{fl['floor_s']:.2f} s = {fl['backoff_s']:g} + {fl['gate_s']:g} + {fl['pacing_s']:g}",
                    f"{med(measured):.3f} s",
                    f"{min(measured):.3f} – {max(measured):.3f} s",
                    f"{max(over) * 1000:+.0f} ms",
                    str(sum(r["total_violations"] for r in runs)),
                    fmt(med(opened), ".2f", " s"),
                ]
            )
        lines += _table(
            [
                "layout",
                "shards × subscribe messages",
                "floor = backoff + gate + pacing",
                "measured (median)",
                "range",
                "worst vs floor",
                "violations",
                "last shard open",
            ],
            table,
        )
        lines += ["", *_skips(rows), ""]
    mem = pool.get("dedup", {})
    if mem.get("ok"):
        tables = ", ".join(f"`{k}` {v:.0f} B" for k, v in mem["tables_b"].items())
        lines += [
            f"**De-duplicator memory.** tracemalloc of one `Dedup` and its `SequenceTracker` (what a pool "
            f"shares over its shards), driven as the router drives them: {mem['streams']:,} streams saw "
            f"{mem['messages_per_stream']} trades each (stream names and trade ids above 2³⁰ made afresh "
            "per message, as parsing makes them); then a reconnect and a move of every stream to another "
            "link, the new link three trades ahead (held), the old one bringing the next, the held ones "
            "released in order, the move ended, four more trades each. Counts are deterministic: one "
            f"run. Goal ≤ {DEDUP_MAX_B} B per stream in both states, key strings included: a few words "
            "per stream (the key, its mark, their hash-table slots) and room for nothing per message.",
            "",
        ]
        lines += _table(
            ["state", "bytes per stream", f"for {mem['streams']:,} streams"],
            [
                [
                    "after the trades",
                    f"{mem['steady_b']:.0f}",
                    f"{mem['steady_b'] * mem['streams'] / KIB / KIB:.2f} MiB",
                ],
                [
                    "after a reconnect and an overlap, holds released",
                    f"{mem['after_overlap_b']:.0f}",
                    f"{mem['after_overlap_b'] * mem['streams'] / KIB / KIB:.2f} MiB",
                ],
            ],
        )
        lines += [
            "",
            f"Of which: the key string {mem['key_b']} B and the mark (an int) {mem['mark_b']} B per stream; "
            f"hash tables at the end, per stream: {tables} (CPython's dicts and sets keep their size once "
            "emptied, so the tables an overlap filled stay).",
            "",
        ]
    elif mem:
        lines += [f"- *de-duplicator memory*: failed — {mem.get('error')}", ""]
    lines += ["![pool](pool.png)", ""]
    return lines


def md_bus(results: Results) -> list[str]:
    bus = results["bus"]
    lat = bus["latency"]
    lines = [
        "## 6. Bus",
        "",
        f"**Throughput, acknowledged.** The server's `/trades` path plays the venue: {bus['streams']} "
        f"trade streams (Binance-shaped trades of ~160 B, ids contiguous from 1), {bus['n']:,} trades in "
        "all, pre-encoded and written as fast as the client reads. A wsclient `Client` validates each "
        "frame into `VenueTrade` and hands it to the sink registered with `client.on(VenueTrade, sink)` "
        '(payload the raw frame, message id `"<stream>:<trade id>"`, window `max_pending='
        f"{bus['max_pending']}`). Rate = messages / time from the first message the sink took until its "
        "`flush()` returned, i.e. every message acknowledged by the bus. **The limit** (`bare`) is a bare "
        "client in its own process publishing the same payloads, keys and ids, built before the clock "
        "starts, with no WebSocket at all: for NATS, nats-py's `js.publish_async` with "
        f"`publish_async_max_pending={bus['max_pending']}` (the sink's window) and "
        "`publish_async_completed()` at the end; for Redis, `XADD key MAXLEN ~ "
        f"{bus['maxlen']:,} * id <id> data <payload>` in pipelines of {bus['pipeline']} "
        "(`transaction=False`, each awaited). NATS: one JetStream stream (subjects `md.>`, file storage, "
        "duplicate window 120 s) deleted and created afresh before every run, then checked to hold "
        "exactly N messages; Redis: the keys deleted before every run (no persistence), then checked to "
        "hold N entries. Rows interleaved per round, each run a fresh process; the bus server is the "
        "same for every run. CPU columns: the publishing process, and the bus server (from /proc) per "
        f"message. Goal: wsclient ≥ {bus['goal']:.2f}× bare, per-round ratio, median.",
        "",
        f"**Latency.** The server's `/bus-paced` path sends {lat['rate']:,} trades/s for "
        f"{lat['seconds']:g} s over the same streams, each ~1 ms batch stamped with `time.time_ns()` "
        "just before its write; a consumer in its own process (an ordered push consumer on the JetStream "
        "stream; `XREAD BLOCK` on the Redis keys) takes `time.time_ns()` on receipt minus the stamp "
        f"(same machine, same clock). The first {lat['warmup']:g} s are left out. The publisher is the "
        "wsclient `Client` + sink, or a bare websockets client that validates each frame with "
        "`validate_json` and publishes it as it comes (NATS `js.publish_async`; Redis `XADD` in a pipeline "
        "of what accumulated while the previous pipeline was out, at most 256). A publisher that cannot "
        "keep up with the rate (see its CPU busy) queues, and its latency grows with the run.",
        "",
    ]
    for name, title in BUS_NAMES.items():
        section = bus.get(name)
        if section is None:
            continue
        lines += [f"### {title}" + (f" ({section['server']})" if section.get("server") else ""), ""]
        if section.get("unavailable"):
            lines += [f"- skipped: {section['unavailable']}", ""]
            continue
        tp = section.get("throughput", {})
        base = tp.get("bare")
        table = []
        for key, row in tp.items():
            if not row.get("runs"):
                continue
            rates = field(row, "rate")
            ratio = None if key == "bare" else paired(row, base, "rate", "/")
            table.append(
                [
                    f"**{row['label']}**" if key == "bare" else row["label"],
                    f"{med(rates):,.0f}",
                    f"{min(rates):,.0f} – {max(rates):,.0f}",
                    "–" if key == "bare" else fmt(ratio, ".3f", "×"),
                    fmt(med(field(row, "cpu_us_per_msg")), ".1f"),
                    fmt(med(field(row, "bus_cpu_us_per_msg")), ".1f"),
                    fmt(med([100 * v for v in field(row, "cpu_share")]), ".0f", " %"),
                ]
            )
        if table:
            lines += _table(
                [
                    "publisher",
                    "msgs/s (median)",
                    "range",
                    "× bare",
                    "publisher CPU µs/msg",
                    "bus server CPU µs/msg",
                    "publisher CPU busy",
                ],
                table,
            )
            lines.append("")
            for key, row in tp.items():
                if key == "bare" or not row.get("runs"):
                    continue
                ra, rb = by_round(row, "rate"), by_round(base, "rate")
                per_round = ", ".join(f"{ra[r] / rb[r]:.3f}" for r in sorted(set(ra) & set(rb)))
                lines.append(f"Per-round ratios, {row['label']} / bare: {per_round}.")
                lines.append("")
        lines += _skips(tp)
        lat_rows = section.get("latency", {})
        table = []
        for row in lat_rows.values():
            if not row.get("runs"):
                continue
            p = [med(field(row, f)) for f in ("p50_us", "p99_us", "p999_us", "max_us")]
            busy = med([100 * v for v in field(row, "publisher_cpu_share")])
            table.append([row["label"], *(fmt(v, ",.0f", " µs") for v in p), fmt(busy, ".0f", " %")])
        if table:
            lines += [
                "",
                f"Latency, venue write → consumer receipt, {lat['rate']:,} msgs/s (medians over rounds):",
                "",
            ]
            lines += _table(["publisher", "p50", "p99", "p99.9", "max", "publisher CPU busy"], table)
        lines += ["", *_skips(lat_rows), ""]
    return lines


def md_profiles(results: Results, out: Path) -> list[str]:
    made = results.get("profiles") or []
    if not made:
        return []
    lines = ["## Profiles of missed goals", ""]
    for p in made:
        path = out / p["path"]
        lines.append(f"### {p['goal']}: `{p['variant']}` — [{p['path']}]({p['path']})")
        lines.append("")
        summary_path = path.with_suffix(".json")
        known = p["goal"] in ("throughput", "latency", "pool throughput") or p["goal"].startswith("bus ")
        if known and summary_path.exists():
            summary = json.loads(summary_path.read_text())
            total = summary["total_s"]
            comps = ", ".join(f"{name} {100 * t / total:.0f} %" for name, t in summary["components"].items())
            lines.append(f"Sampled time by component (pyinstrument, profiler overhead included): {comps}.")
            lines.append("")
            lines.append("wsclient's own hottest functions (self time):")
            lines.append("")
            for name, t in summary["wsclient_functions"][:6]:
                lines.append(f"- `{name}`: {100 * t / total:.1f} %")
            lines.append("")
        elif p["goal"] == "memory" and path.exists():
            head = path.read_text().splitlines()[:24]
            lines += ["```", *head, "```", ""]
    notes = out.parent / "ANALYSIS.md"
    if notes.exists():
        lines += [f"See [ANALYSIS.md](../{notes.name}) for a reading of these profiles.", ""]
    return lines


def md_goals(table: list[dict[str, Any]]) -> list[str]:
    verdict = {True: "**met**", False: "**missed**", None: "–"}
    rows = [[g["goal"], g["target"], g["measured"], verdict[g["met"]], g["margin"]] for g in table]
    return ["## Goals", "", *_table(["goal", "target", "measured", "verdict", "by"], rows), ""]


def md_machine(meta: dict[str, Any]) -> list[str]:
    m = meta["machine"]
    libs = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    load = " / ".join(f"{a:.2f}" for a in m["loadavg_start"])
    load_end = " / ".join(f"{a:.2f}" for a in m.get("loadavg_end", []))
    return [
        "## Machine",
        "",
        *_table(
            ["", ""],
            [
                ["CPU", f"{m['cpu_model']} — {m['cores']} cores ({m['cores_usable']} usable)"],
                ["memory", m["memory"]],
                ["OS", m["kernel"]],
                ["Python", m["python"]],
                ["libraries", libs],
                ["wsclient commit", m.get("commit") or "–"],
                ["load average (1/5/15 min)", f"start {load}; end {load_end}"],
            ],
        ),
        "",
    ]


def render(results: Results, out: Path) -> tuple[str, list[dict[str, Any]]]:
    meta = results["meta"]
    goal_table = goals(results)
    lines = [
        "# wsclient benchmarks",
        "",
        f"Generated by `make bench` (`{meta['command'].strip()}`) on {meta['started']}, "
        f"{meta.get('duration_s', 0) / 60:.0f} min, {meta['rounds']} rounds per measure, every run in a "
        "fresh process, rounds interleaved (A B C … A B C …), medians reported. Everything runs on "
        "127.0.0.1; the server is a separate process that writes pre-encoded frames (see the server CPU "
        "columns: it is never the bottleneck). Default asyncio event loop everywhere.",
        "",
    ]
    if meta.get("quick"):
        lines += ["> **Quick run** (`QUICK=1`): fewer messages and rounds; figures are indicative only.", ""]
    if meta.get("note"):
        lines += [f"> **Note:** {meta['note']}", ""]
    features = meta.get("features", {})
    if features:
        lines += [
            f"wsclient features found: typed API `Client.on` {'yes' if features.get('typed') else 'no'}; "
            f'`ClientConfig(transport="picows")` {"yes" if features.get("picows_transport") else "no"}'
            + (f" ({features['picows_reason']})" if features.get("picows_reason") else "")
            + ".",
            "",
        ]
    lines += md_machine(meta)
    lines += md_goals(goal_table)
    if "throughput" in results:
        lines += [*md_throughput(results), ""]
    if "latency" in results:
        lines += [*md_latency(results), ""]
    if "deadlink" in results:
        lines += [*md_deadlink(results), ""]
    if "idle" in results:
        lines += [*md_idle(results), ""]
    if "pool" in results:
        lines += [*md_pool(results), ""]
    if "bus" in results:
        lines += [*md_bus(results), ""]
    lines += md_profiles(results, out)
    lines += [
        "## Reproduce",
        "",
        "`make bench` (full: ~25 min on 2 cores), `make bench QUICK=1` (a few minutes), or "
        "`.venv/bin/python -m benchmarks.run --only throughput --n 200000 --rounds 5` (`--only pool` for "
        "the Pool's, `--only bus` for the bus sinks', which writes bus.md instead of this file); "
        "`python -m benchmarks.report` re-renders this file from `latest.json`.",
        "",
    ]
    return "\n".join(lines), goal_table


def summary_text(results: Results, goal_table: list[dict[str, Any]]) -> str:
    lines = ["", "wsclient benchmarks — summary (medians)", "=" * 40]
    tp = results.get("throughput", {}).get("rows", {})
    if tp:
        base = tp.get(BASELINE)
        lines.append("throughput:")
        for row in tp.values():
            rate = med(field(row, "rate"))
            if rate is not None:
                ratio = paired(row, base, "rate", "/")
                lines.append(f"  {row['label']:<58} {rate:>10,.0f} msg/s  {fmt(ratio, '.3f', '×'):>7}")
    lat = results.get("latency", {}).get("rows", {})
    if lat:
        lines.append("added latency at 20k msgs/s (p50 / p99 / p99.9 µs):")
        for row in lat.values():
            if row.get("runs"):
                p = [med(field(row, f)) for f in ("p50_us", "p99_us", "p999_us")]
                lines.append(f"  {row['label']:<58} {p[0]:>6,.0f} / {p[1]:>6,.0f} / {p[2]:>6,.0f}")
    dl = results.get("deadlink", {})
    for scenario in ("blackhole", "restart"):
        rows = dl.get(scenario, {})
        if rows:
            lines.append(f"dead link, {scenario} (declared dead / first message, from the cut or kill):")
            for row in rows.values():
                if row.get("runs"):
                    d, t = med(field(row, "detect_s")), med(field(row, "total_s"))
                    lines.append(f"  {row['label'][:58]:<58} {ms(d):>9} / {ms(t):>9}")
    mem = results.get("idle", {}).get("memory", {})
    if mem:
        lines.append("memory per idle connection:")
        for key, row in mem.items():
            v = med(field(row, "per_conn_kib"))
            if v is not None:
                lines.append(f"  {row['label'] + ', compression ' + key.split('|')[1]:<58} {v:>7.1f} KiB")
    cpu = results.get("idle", {}).get("cpu", {})
    for row in cpu.values():
        v = med(field(row, "cpu_pct"))
        if v is not None:
            lines.append(f"  idle CPU, {row['label']:<48} {v:>7.1f} % of a core")
    pool = results.get("pool", {})
    ptp = pool.get("throughput", {})
    if ptp:
        lines.append(
            f"pool throughput, {pool.get('streams', 0)} streams (msgs/s, client CPU µs/msg, efficiency):"
        )
        for key, row in ptp.items():
            rate, cpu = med(field(row, "rate")), med(field(row, "cpu_us_per_msg"))
            if rate is not None:
                eff = (
                    None
                    if key == POOL_BASELINE
                    else paired(ptp.get(POOL_BASELINE), row, "cpu_us_per_msg", "/")
                )
                lines.append(
                    f"  {row['label']:<58} {rate:>10,.0f} msg/s  {fmt(cpu, '.2f')} µs  {fmt(eff, '.3f', '×')}"
                )
    for key, row in pool.get("resubscribe", {}).get("rows", {}).items():
        if row.get("runs"):
            floor = row["runs"][0]["floor"]["floor_s"]
            lines.append(
                f"  resubscribe {key.replace('|', '/conn, batch '):<46} "
                f"{med(field(row, 'resubscribe_s')):.3f} s (floor {floor:.3f} s)"
            )
    mem = pool.get("dedup", {})
    if mem.get("ok"):
        lines.append(
            f"  dedup state per stream: {mem['steady_b']:.0f} B, "
            f"{mem['after_overlap_b']:.0f} B after an overlap"
        )
    bus = results.get("bus", {})
    for name, title in BUS_NAMES.items():
        section = bus.get(name, {})
        tp = section.get("throughput", {})
        if tp:
            lines.append(f"bus {title}, acknowledged (msgs/s, × bare):")
            for key, row in tp.items():
                rate = med(field(row, "rate"))
                if rate is not None:
                    ratio = None if key == "bare" else paired(row, tp.get("bare"), "rate", "/")
                    lines.append(f"  {row['label'][:70]:<70} {rate:>9,.0f}  {fmt(ratio, '.3f', '×')}")
                elif row.get("skipped"):
                    lines.append(f"  {row['label'][:70]:<70} skipped")
        for row in section.get("latency", {}).values():
            if row.get("runs"):
                p = [med(field(row, f)) for f in ("p50_us", "p99_us")]
                lines.append(f"  latency {row['label'][:62]:<62} p50 {p[0]:>7,.0f} µs  p99 {p[1]:>7,.0f} µs")
    lines.append("goals:")
    for g in goal_table:
        verdict = {True: "met", False: "MISSED", None: "-"}[g["met"]]
        lines.append(f"  [{verdict:^6}] {g['goal']}: {g['measured']} (target {g['target']}; {g['margin']})")
    return "\n".join(lines)


def write(results: Results, out: Path, name: str = "latest") -> str:
    """Write ``<name>.md`` and the charts into ``out``; return the summary text. The bus measure's own
    report (``name="bus"``) has no charts, so it leaves the full report's PNGs alone."""
    charts = {
        "throughput.png": chart_throughput,
        "latency_cdf.png": chart_latency,
        "deadlink.png": chart_deadlink,
        "memory.png": chart_memory,
        "pool.png": chart_pool,
    }
    if name == "latest":
        for png, make in charts.items():
            make(results, out / png)
    text, goal_table = render(results, out)
    (out / f"{name}.md").write_text(text)
    return summary_text(results, goal_table)


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results" / "latest.json"
    results = json.loads(path.read_text())
    print(write(results, path.parent, path.stem))


if __name__ == "__main__":
    main()
