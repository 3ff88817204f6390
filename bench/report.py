"""Turn bench/results/*.json into plots (bench/results/*.png) and the tables of BENCHMARKS.md.

    .venv/bin/python -m bench.report

BENCHMARKS.md keeps its prose; only the blocks between `<!-- BEGIN:name -->` and `<!-- END:name -->`
are rewritten from the results, so every number in it comes from a run (never typed by hand).
Needs matplotlib (the `bench` extra).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import REPO, RESULTS, log

DOC = REPO / "BENCHMARKS.md"
TARGET_LABEL = {"engine": "engine (direct)", "nginx": "nginx (access log on)", "proxy_1w": "rerank-proxy, 1 worker",
                "proxy_2w": "rerank-proxy, 2 workers", "proxy_defaults": "rerank-proxy, shipped defaults",
                "proxy_no_access_log": "rerank-proxy, access lines off (warning level)"}


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def ms(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def yes(met: bool) -> str:
    return "**met**" if met else "**not met**"


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


# --- plots ---------------------------------------------------------------------------------------

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, name: str) -> str:
    """Lay out, write bench/results/<name> and free the figure; returns the file name."""
    fig.tight_layout()
    fig.savefig(RESULTS / name, dpi=110)
    _plt().close(fig)
    return name


def _pct_x(p: float) -> float:
    return -math.log10(1 - min(p, 99.99) / 100)


def _pct_axis(ax) -> None:
    ticks = [50, 90, 99, 99.9, 99.99]
    ax.set_xticks([_pct_x(t) for t in ticks])
    ax.set_xticklabels([f"p{t:g}" for t in ticks])
    ax.set_xlim(_pct_x(1), _pct_x(99.99))
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_ylabel("latency (ms, log)")


def plot_percentiles(panels: list[tuple[str, dict[str, dict[str, float]]]], path: Path, title: str) -> None:
    plt = _plt()
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.2 * rows), squeeze=False)
    for ax, (name, curves) in zip([a for row in axes for a in row], panels):
        for label, pcts in curves.items():
            xs = sorted(pcts, key=float)
            ax.plot([_pct_x(float(p)) for p in xs], [max(pcts[p], 0.01) for p in xs], label=label)
        ax.set_title(name)
        _pct_axis(ax)
        ax.legend(fontsize=8)
    for ax in [a for row in axes for a in row][len(panels):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ecdf_pcts(values: list[float]) -> dict[str, float]:
    from .common import quantile
    if not values:
        return {}
    return {str(p): quantile(values, p / 100) for p in [*range(1, 100), 99.5, 99.9]}


def plot_passthrough(data: dict[str, Any]) -> str:
    panels = []
    for op, label in (("get", "GET /{index}/_doc/{id}"), ("bulk_1000", "_bulk, 1,000 docs")):
        for conc in (1, 32):
            curves = {TARGET_LABEL[t]: data["cells"][f"{op}/c{conc}/{t}"]["percentiles_ms"]
                      for t in TARGET_LABEL if f"{op}/c{conc}/{t}" in data["cells"]}
            if curves:
                panels.append((f"{label}, concurrency {conc}", curves))
    path = RESULTS / "passthrough_latency.png"
    plot_percentiles(panels, path, "Pass-through latency by percentile (wrk, median over rounds)")
    return path.name


HIT_LABELS = {"proxy_hit": "rerank-proxy, cache hit (size 10)",
              "proxy_hit_no_memo": "rerank-proxy, cache hit, CACHE_ANSWERS_MAX_MB=0"}


def plot_search(data: dict[str, Any]) -> list[str]:
    out = []
    if "cache_hit" in data:
        cells = data["cache_hit"]["cells"]
        names = data["cache_hit"].get("proxies", ["proxy_hit"])
        panels = [(f"concurrency {c}",
                   {"engine, size 100": cells[f"c{c}/engine_size100"]["percentiles_ms"],
                    **{HIT_LABELS.get(n, n): cells[f"c{c}/{n}"]["percentiles_ms"] for n in names}})
                  for c in (1, 32)]
        path = RESULTS / "search_hit_latency.png"
        plot_percentiles(panels, path, "Reranked search, cache hit, vs the engine alone (wrk)")
        out.append(path.name)
    if "cache_miss" in data:
        panels = []
        for conc in (1, 32):
            curves = {name.split("/")[0]: _ecdf_pcts(res["added_distribution"])
                      for name, res in data["cache_miss"].items() if name.endswith(f"/c{conc}")}
            panels.append((f"proxy's own time on a miss, concurrency {conc}", curves))
        path = RESULTS / "search_miss_added.png"
        plot_percentiles(panels, path, "Cache miss: total - engine - provider (50 ms test provider)")
        out.append(path.name)
    return out


def plot_memory(data: dict[str, Any]) -> str:
    plt = _plt()
    samples = data["samples"]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    t = [s["t_s"] / 60 for s in samples]
    ax.plot(t, [s["VmRSS"] / 1024 for s in samples], label="VmRSS (MiB)", color="tab:blue")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MiB)")
    ax.set_ylim(0, max(s["VmRSS"] for s in samples) / 1024 * 1.2)
    ax.grid(True, alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(t, [s["cache_entries"] or 0 for s in samples], color="tab:orange", alpha=0.6, label="cache entries")
    ax2.set_ylabel("score-cache entries")
    ax2.set_ylim(0, data["params"]["cache_max_entries"] * 1.2)
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="lower right")
    ax.set_title(f"rerank-proxy RSS under mixed load (CACHE_MAX_ENTRIES={data['params']['cache_max_entries']})")
    return save_figure(fig, "memory_rss.png")


def plot_warming(data: dict[str, Any]) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4))
    for run in data["runs"]:
        passes = run["passes"]
        ax.plot([p["at_s"] for p in passes], [100 * p["reranked_share"] for p in passes], marker="o",
                label=f"{run['busy']} busy processes")
    ax.set_xlabel("seconds after the first search on a fresh store")
    ax.set_ylabel("searches reranked (%)")
    ax.set_ylim(0, 105)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("Warming on the shipped defaults: Cranfield, 225 queries per pass")
    return save_figure(fig, "warming.png")


def plot_cost(data: dict[str, Any]) -> list[str]:
    plt = _plt()
    out = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, res in data["setups"].items():
        if not res.get("cumulative"):
            continue
        xs = range(1, len(res["cumulative"]["calls"]) + 1)
        style = {"linestyle": "--", "linewidth": 2.5} if name == "two_replicas_redis" else {}
        axes[0].plot(xs, res["cumulative"]["calls"], label=name, **style)
        axes[1].plot(xs, res["cumulative"]["documents"], label=name, **style)
    axes[0].set_ylabel("provider requests (cumulative)")
    axes[1].set_ylabel("documents sent (cumulative)")
    for ax in axes:
        ax.set_xlabel("searches replayed")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Provider work along the search log")
    out.append(save_figure(fig, "cost_cumulative.png"))
    hit = data["setups"].get("in_process", {}).get("hit_latency")
    if hit:
        path = RESULTS / "cost_hit_latency.png"
        plot_percentiles([("sequential, one search at a time", {
            "engine, size 100": _ecdf_pcts(hit["distributions"]["direct_size100"]),
            "rerank-proxy, cache hit": _ecdf_pcts(hit["distributions"]["proxy_hit"])})],
            path, "Cache-hit searches from the log vs the engine alone")
        out.append(path.name)
    return out


def plot_scaling(data: dict[str, Any]) -> str:
    """CPU per search against the window, one line per document size, nginx's per request beside."""
    plt = _plt()
    cells = data["cells"]
    sizes = sorted({c["doc_bytes"] for c in cells.values()})
    colors = dict(zip(sizes, ("tab:blue", "tab:orange", "tab:green", "tab:purple")))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    for ax, (part, key, title) in zip(axes, (("proxy_hit", "cpu_ms_per_request", "cache hit (page of 10)"),
                                             ("proxy_miss", "cpu_ms_per_search", "cache miss (0 ms test provider)"))):
        for size in sizes:
            row = sorted((c for c in cells.values() if c["doc_bytes"] == size), key=lambda c: c["window"])
            label = f"{size // 1024} KB"
            xs = [c["window"] for c in row]
            ax.plot(xs, [c[part][key] for c in row], marker="o", color=colors[size], label=f"rerank-proxy, {label}")
            ax.plot(xs, [c["nginx"]["cpu_ms_per_request"] for c in row], marker="s", linestyle="--",
                    color=colors[size], alpha=0.6, label=f"nginx, size = window, {label}")
            for c in row:
                if c["outcome"] == "candidates_too_large":
                    ax.scatter([c["window"]], [c[part][key]], marker="x", s=120, color="red", zorder=5)
                    ax.annotate("lexical: candidates_too_large", (c["window"], c[part][key]),
                                textcoords="offset points", xytext=(-150, 10), fontsize=8, color="red")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([c for c in sorted({c["window"] for c in cells.values()})])
        ax.set_xticklabels([f"{w:,}" for w in sorted({c["window"] for c in cells.values()})])
        ax.set_xlabel("window (hits fetched from the engine)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("CPU ms per search (log)")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle("CPU per search: rerank-proxy (1 worker) and nginx relaying the engine's size = window answer")
    return save_figure(fig, "scaling.png")


# --- what the proxies were set to ----------------------------------------------------------------

DIFFERS_HEAD = "Settings that differ from the shipped defaults"


def recorded_differs(d: dict[str, Any], only: Callable[[str], bool] | None = None) -> dict[str, dict[str, str]] | None:
    """`settings_differ` of a results file (every proxy the run started through bench/common.py's
    harness, by name: the settings that were not the shipped defaults); None when the run predates it."""
    by_proxy = d.get("settings_differ")
    if not isinstance(by_proxy, dict):
        return None
    return {name: dict(v) for name, v in by_proxy.items() if only is None or only(name)}


def _shipped(name: str) -> str:
    from rerank_proxy.config import SETTINGS

    return next((f"{s.name}={s.default}" for s in SETTINGS if s.name == name), name)


def differs_sentence(by_proxy: dict[str, dict[str, str]] | None) -> str:
    """The report's one statement of the set-up's settings, made from what the harness recorded."""
    if by_proxy is None:
        return (f"{DIFFERS_HEAD}: not recorded by this run (it predates the record bench/common.py keeps of "
                f"them); run the benchmark again before reading its rows as the shipped defaults.")
    if not by_proxy or not any(by_proxy.values()):
        return f"{DIFFERS_HEAD}: none (every proxy of the run on the shipped defaults, UPSTREAM_URLS aside)."
    pairs = sorted({(n, v) for differs in by_proxy.values() for n, v in differs.items()})
    everywhere = [f"{n}={v}" for n, v in pairs if all(differs.get(n) == v for differs in by_proxy.values())]
    parts = [("in every proxy: " if len(by_proxy) > 1 else "") + ", ".join(everywhere)] if everywhere else []
    for name in sorted({n for n, v in pairs if f"{n}={v}" not in everywhere}):
        values = sorted({v for n, v in pairs if n == name}, key=lambda v: (len(v), v))
        shown = [f"{name}={v} in {', '.join(p for p, differs in by_proxy.items() if differs.get(name) == v)}"
                 for v in values]
        rest = sum(1 for differs in by_proxy.values() if name not in differs)
        parts.append("; ".join(shown) + (f" (the shipped {_shipped(name)} in the other {rest})" if rest else ""))
    return f"{DIFFERS_HEAD} (as the harness set them): " + "; ".join(parts) + "."


# --- tables --------------------------------------------------------------------------------------

def machine_block(m: dict[str, Any], extra: str = "") -> str:
    load = m.get("loadavg_at_start", [])
    end = m.get("loadavg_at_end", [])
    return (f"Machine: {m['nproc']} cores ({m['cpu_model']}), {m['ram_gib']} GiB RAM, Linux {m['kernel']}, "
            f"Python {m['python']}; run {m['when']}; load average (1/5/15 min) "
            f"{'/'.join(f'{x:.1f}' for x in load)} at start, {'/'.join(f'{x:.1f}' for x in end) or '-'} at end."
            + (f" {extra}" if extra else ""))


def passthrough_tables(d: dict[str, Any]) -> str:
    rows = []
    for key, row in d["table"].items():
        op, conc, target = key.split("/")
        rows.append([op, conc[1:], TARGET_LABEL[target], ms(row["p50_ms"]), ms(row["p99_ms"]), f"{row['rps']:.0f}",
                     ms(row["added_p50_ms"]) if target != "engine" else "",
                     ms(row["added_p99_ms"]) if target != "engine" else "",
                     f"{row['rps_vs_engine']:.2f}" if target != "engine" else "",
                     (f"{row['rps_vs_nginx']:.2f}"
                      if row["rps_vs_nginx"] is not None and target.startswith("proxy") else ""),
                     ms(row["cpu_ms_per_request"], 3), row["errors"]])
    table = md_table(["request", "conc.", "path", "p50 ms", "p99 ms", "req/s", "added p50 ms", "added p99 ms",
                      "req/s vs engine", "req/s vs nginx", "CPU ms/req", "errors"], rows)
    checks = md_table(["target", "measured", "result"],
                      [[c["check"], f"{c['value_ms']:+.2f} ms" if "value_ms" in c else f"{c['value']:.2f}x",
                        yes(c["met"])]
                       for c in d["checks"]])
    p = d["params"]
    return (f"{machine_block(d['machine'])} Engine: {d['engine']}. wrk runs of {p['duration']:.0f} s, "
            f"{p['rounds']} interleaved rounds; each figure is the median over rounds. \"added\" = the path's "
            f"figure minus the engine's (direct) figure. CPU ms/req: CPU time of the proxy or nginx processes "
            f"(all workers) per request. {differs_sentence(recorded_differs(d))}\n\n{table}\n\n{checks}")


def _warm_cached(h: dict[str, Any]) -> str:
    warm = h["warm_cached"]
    if isinstance(warm, dict):
        return ", ".join(f"{n}/{h['queries']} ({name})" for name, n in warm.items())
    return f"{warm}/{h['queries']}"


def search_hit_tables(d: dict[str, Any]) -> str:
    h = d["cache_hit"]
    names = h.get("proxies", ["proxy_hit"])
    rows = []
    for name in names:
        for conc in (1, 32):
            e, p = h["cells"][f"c{conc}/engine_size100"], h["cells"][f"c{conc}/{name}"]
            r = h["ratios"][name][f"c{conc}"] if name in h["ratios"] else h["ratios"][f"c{conc}"]
            rows.append([HIT_LABELS.get(name, name), conc, ms(e["p50_ms"]), ms(p["p50_ms"]), f"{r['p50']:.2f}x",
                         ms(e["p99_ms"]), ms(p["p99_ms"]), f"{r['p99']:.2f}x", f"{e['rps']:.0f}", f"{p['rps']:.0f}",
                         ms(p.get("proxy_cpu_ms_per_request")), e["errors"] + p["errors"]])
    table = md_table(["proxy", "conc.", "engine size 100 p50 ms", "proxy hit p50 ms", "p50 ratio", "engine p99 ms",
                      "proxy p99 ms", "p99 ratio", "engine req/s", "proxy req/s", "proxy CPU ms / search", "errors"],
                     rows)
    targets = h.get("targets", [h["target"]])
    workers = h.get("workers")
    setup = (f"Proxy: the shipped defaults (WORKERS=auto, {workers} workers here). " if workers and workers > 1
             else "Proxy: 1 worker, otherwise the shipped defaults. ")
    return (f"{machine_block(d['machine'])} Engine: {d['engine']}. {setup}{h['queries']} queries, "
            f"{_warm_cached(h)} answered `X-Rerank: cached` after warming; provider requests "
            f"while wrk ran: {h['provider_calls_during_timed_runs']} (so every timed search was a hit). "
            f"wrk runs of {d['params']['duration']:.0f} s, {d['params']['rounds']} rounds, medians over rounds. "
            f"{differs_sentence(recorded_differs(d, lambda name: name.startswith('proxy_hit')))}\n\n"
            f"{table}\n\n" + "\n".join(f"Target: {t['check']}: {t['value']:.2f}x, {yes(t['met'])}." for t in targets))


def search_miss_tables(d: dict[str, Any]) -> str:
    rows = []
    for name, r in d["cache_miss"].items():
        setup, conc = name.split("/")
        rows.append([setup, conc[1:], f"{r['measured_misses']}/{r['requests']}", f"{r['throughput_rps']:.0f}",
                     ms(r["total"]["p50"], 1), ms(r["engine"]["p50"], 1), ms(r["provider"]["p50"], 1),
                     ms(r["added"]["p50"]), ms(r["added"]["p99"]),
                     ms(r.get("added_in_proxy", {}).get("p50")), ms(r.get("added_in_proxy", {}).get("p99")),
                     ms(r.get("added_provider_own_clock", {}).get("p50")), ms(r["rerank_minus_provider"]["p50"]),
                     ms(r["outside_engine_and_rerank"]["p50"]), ms(r.get("slot_wait_ms_per_search")),
                     ms(r.get("proxy_cpu_ms_per_search")), ms(r.get("proxy_cpu_share")),
                     " / ".join(ms(r.get("other_cpu_ms_per_search", {}).get(k))
                                for k in ("engine", "test_server", "load_generator"))])
    table = md_table(["set-up", "conc.", "misses measured", "searches/s", "total p50 ms", "engine p50 ms",
                      "provider p50 ms", "**proxy's own p50 ms, client**", "**proxy's own p99 ms, client**",
                      "**proxy's own p50 ms, inside**", "**proxy's own p99 ms, inside**",
                      "own p50 ms with the test server's clock",
                      "rerank - provider p50 ms", "total - engine - rerank p50 ms",
                      "provider-slot wait, mean ms / search", "proxy CPU ms / search", "proxy CPU (cores)",
                      "CPU ms / search: engine / test server / load generator"], rows)
    checks = md_table(["target", "p50 ms", "p99 ms", "result"],
                      [[c["check"], ms(c["p50"]), ms(c["p99"]), yes(c["met"])] for c in d["cache_miss_checks"]])
    default = d["cache_miss"].get("default/c32", {})
    return (f"{machine_block(d['machine'])} Engine: {d['engine']}. Set-ups: `default` = the shipped "
            f"defaults (WORKERS=auto: {default.get('workers', '?')} workers here); `1w` = 1 worker, otherwise the "
            f"defaults; `1w_conc16` = 1 worker, RERANK_MAX_CONCURRENCY=16{_own_core_note(d)}. Provider: the "
            f"Cohere-protocol test server, fixed {d['params']['provider_delay_ms']:.0f} ms delay. "
            f"{default.get('rounds', 1)} round(s), the set-ups interleaved in each; each set-up's rounds pooled "
            f"(percentiles over every miss measured). "
            f"{differs_sentence(recorded_differs(d, lambda name: name.startswith('proxy-miss-')))}"
            f"\n\n{table}\n\n{checks}")


def _own_core_note(d: dict[str, Any]) -> str:
    notes = []
    for name in ("default_engine_own_core", "default_proxy_own_core"):
        pinned = d["cache_miss"].get(f"{name}/c32")
        if pinned:
            notes.append(f"; `{name}` = the shipped defaults with the placement changed, not a setting: "
                         f"{pinned['placement']} (so WORKERS=auto starts {pinned['workers']} worker)")
    return "".join(notes)


def scaling_tables(d: dict[str, Any]) -> str:
    rows = []
    for c in d["cells"].values():
        e, n, h, m = c["engine"], c["nginx"], c["proxy_hit"], c["proxy_miss"]
        lexical = c["outcome"] == "candidates_too_large"
        ratio = (h["cpu_ms_per_request"] / n["cpu_ms_per_request"]
                 if h["cpu_ms_per_request"] and n["cpu_ms_per_request"] else None)
        rows.append([f"{c['doc_bytes'] // 1024} KB", f"{c['window']:,}", ms(e["answer_bytes"] / 1e6, 2),
                     "**lexical** (`candidates_too_large`)" if lexical else c["outcome"],
                     ms(e["p50_ms"]), ms(n["p50_ms"]), ms(n["cpu_ms_per_request"], 3),
                     ms(h["p50_ms"]) + (" (not a hit)" if lexical else ""), ms(h["cpu_ms_per_request"]),
                     f"{ratio:.1f}x" if ratio else "-", ms(m["cpu_ms_per_search"]), ms(m["latency_ms"].get("p50")),
                     f"{m['searches']}", e["errors"] + n["errors"] + h["errors"]])
    table = md_table(["doc size", "window", "engine answer MB", "outcome", "engine p50 ms", "nginx p50 ms",
                      "nginx CPU ms / req", "proxy hit p50 ms", "**proxy hit CPU ms / search**",
                      "hit CPU vs nginx", "**proxy miss CPU ms / search**", "miss p50 ms", "misses", "errors"], rows)
    p = d["params"]
    docs = next(iter(d["indices"].values()))["docs"]
    calls = sum(c["proxy_hit"]["provider_calls_during_wrk"] for c in d["cells"].values())
    too_large = [f"{c['doc_bytes'] // 1024} KB x {c['window']:,}" for c in d["cells"].values()
                 if c["outcome"] == "candidates_too_large"]
    head = (f"{machine_block(d['machine'])} Engine: {d['engine']}. {d['queries']} Cranfield queries, each matching "
            f"at least 1,000 of the {docs:,} documents of every index; wrk at concurrency 1, runs of "
            f"{p['duration']:.0f} s, {p['rounds']} interleaved round(s) (engine, nginx, proxy), medians over rounds; "
            f"up to {p['miss_count']} cache-miss searches per cell (at most {p['miss_max_s']:.0f} s), one at a time"
            f"{' (a --quick run: not for reporting)' if p.get('quick') else ''}.\n\n"
            f"One proxy process per cell; the provider is the Cohere-protocol "
            f"test server with 0 ms delay. {differs_sentence(recorded_differs(d))}{scaling_kept(d)} nginx "
            f"as in Pass-through (bench/nginx.conf, proxy buffering on, so a large answer is spooled to a temp file). "
            f"Provider requests while wrk ran: {calls} over all cells"
            f"{' (every timed proxy search was a cache hit, or lexical)' if calls == 0 else ''}. CPU: utime + stime of "
            f"the proxy's processes (or nginx's master and workers) over the run, per request; the engine's CPU is "
            f"not counted (it is shared with other work).")
    if too_large:
        head += (f" **Answered lexically: {', '.join(too_large)}.** The engine's answer is past MAX_CANDIDATE_BYTES, "
                 f"so the proxy stops reading at the limit and relays the client's own search (page of 10) to the "
                 f"engine, flagged `X-Rerank: bypass`, `X-Rerank-Reason: candidates_too_large`; the proxy's figures "
                 f"in that row are the cost of that, not of a rerank.")
    return head + f"\n\n{table}\n\n" + scaling_fit(d)


def scaling_kept(d: dict[str, Any]) -> str:
    """The shipped defaults the scaling run names beside its figures, those no proxy of it changed
    (by its recorded settings_differ); nothing when the run recorded neither."""
    st, by_proxy = d["settings"], recorded_differs(d)
    shipped = st.get("shipped")
    if not isinstance(shipped, dict) or by_proxy is None:
        return ""
    changed = {name for differs in by_proxy.values() for name in differs}
    kept = [_kept(n, v, st.get("worker_processes", "?")) for n, v in shipped.items() if n not in changed]
    return f" Shipped defaults kept: {', '.join(kept)};" if kept else ""


def _kept(name: str, value: str, processes: Any) -> str:
    if name == "WORKERS":
        return f"{name}={value} ({processes} serving process(es))"
    if name == "MAX_CANDIDATE_BYTES":
        return f"{name}={int(value) >> 20} MiB"
    if name == "RERANK_MAX_CHARS":
        return f"{name}={value} (each hit's text is cut to that before it is sent)"
    return f"{name}={value}"


def scaling_fit(d: dict[str, Any]) -> str:
    """A least-squares fit of CPU per request = fixed + per hit x window + per MB x answer size over
    the reranked cells: which of the two (hits or bytes) the cost follows, in one line per path."""
    import numpy as np

    cells = [c for c in d["cells"].values() if c["outcome"] == "reranked"]
    if len(cells) < 4:
        return ""
    a = np.array([[1.0, c["window"], c["engine"]["answer_bytes"] / 1e6] for c in cells])
    rows = []
    for label, part, key in (("rerank-proxy, cache hit", "proxy_hit", "cpu_ms_per_request"),
                             ("rerank-proxy, cache miss", "proxy_miss", "cpu_ms_per_search"),
                             ("nginx (size = window)", "nginx", "cpu_ms_per_request")):
        y = np.array([c[part][key] for c in cells])
        coef, *_ = np.linalg.lstsq(a, y, rcond=None)
        worst = float(np.max(np.abs(y - a @ coef)))
        rows.append([label, ms(coef[0]), ms(coef[1] * 1000, 1), ms(coef[2]), ms(worst)])
    return (f"Fit over the {len(cells)} reranked cells, CPU ms per request = fixed + per hit x window + per MB x "
            f"engine answer MB (least squares):\n\n"
            + md_table(["path", "fixed ms", "µs per hit", "ms per MB", "largest residual ms"], rows))


def cost_tables(d: dict[str, Any]) -> str:
    labels = {"no_cache": "no cache (CACHE_MAX_ENTRIES=0)", "in_process": "in-process cache (1 proxy)",
              "two_replicas_redis": "2 replicas sharing Redis (round-robin)",
              "two_replicas_no_share": "2 replicas sharing nothing (round-robin)"}
    rows = []
    for name, r in d["setups"].items():
        if name not in labels:
            continue
        per, last = r["per_1000"], r.get("last_1000") or {}
        rows.append([labels.get(name, name), f"{per['provider_calls']:.0f}", f"{per['documents_sent']:.0f}",
                     f"{per['search_units']:.0f}", str(last.get("provider_calls", "-")),
                     str(last.get("documents_sent", "-")), str(last.get("search_units", "-")),
                     ", ".join(f"{k} {v}" for k, v in sorted(r["x_rerank"].items())),
                     ", ".join(f"{k} {v}" for k, v in sorted(r["http_status"].items()))])
    table = md_table(["set-up", "provider requests / 1,000 searches", "documents sent / 1,000", "search units / 1,000",
                      "requests, last 1,000", "documents, last 1,000", "units, last 1,000", "X-Rerank", "HTTP"], rows)
    lg, p = d["log"], d["params"]
    t = d["target"]
    head = (f"{machine_block(d['machine'])} Engine: {d['engine']}. Log: {lg['searches']} searches (seed {p['seed']}), "
            f"Zipf exponent s = {p['zipf']} over the {225} Cranfield queries; {lg['new_searches']} new searches "
            f"({lg['filtered_new_searches']} with a `bucket < k` filter), "
            f"{lg['next_page_searches']} next-page searches "
            f"({100 * lg['next_page_searches'] / lg['searches']:.0f}%); {lg['distinct_queries']} distinct queries, "
            f"{lg['distinct_query_filter_pairs']} distinct query+filter pairs; deepest page {lg['max_page']}. "
            f"Replayed in order, concurrency {p['concurrency']}; per-1,000 figures = whole-log totals x 1000 / "
            f"{lg['searches']}; \"last 1,000\" = the last 1,000 searches of the log (warm caches). "
            f"{differs_sentence(recorded_differs(d))}\n\n{table}\n\n"
            f"Target: the in-process cache makes {t['in_process_calls_vs_no_cache']:.2f}x the provider requests of no "
            f"cache: at least halved: {yes(t['halved'])}.")
    head += workers_table(d)
    hit = d["setups"].get("in_process", {}).get("hit_latency")
    if hit:
        rows = [["rerank-proxy, cache hit (page of 10)", ms(hit["proxy_hit_ms"]["p50"]), ms(hit["proxy_hit_ms"]["p90"]),
                 ms(hit["proxy_hit_ms"]["p99"])],
                ["engine direct, size 100", ms(hit["direct_size100_ms"]["p50"]), ms(hit["direct_size100_ms"]["p90"]),
                 ms(hit["direct_size100_ms"]["p99"])],
                ["ratio", f"{hit['ratio_p50']:.2f}x", "", f"{hit['ratio_p99']:.2f}x"]]
        head += (f"\n\nCache-hit latency on the log's searches: {hit['searches']} distinct first-page searches of the "
                 f"log, after the replay (warm), sent one at a time alternately through the proxy and straight to "
                 f"the engine with size 100; {hit['proxy_cached_responses']}/{hit['searches']} proxy answers were "
                 f"`X-Rerank: cached`.\n\n" + md_table(["path", "p50 ms", "p90 ms", "p99 ms"], rows))
    return head


def workers_table(d: dict[str, Any]) -> str:
    """One worker against the shipped default (WORKERS=auto) on the same log, sequential and concurrent."""
    pairs = d.get("workers_target")
    if not pairs:
        return ""
    rows = []
    for pair in pairs:
        for name in (pair["one"], pair["default"]):
            r = d["setups"][name]
            host = r.get("host_tier", {})
            workers = r["workers"][0]
            label = "1 worker" if name == pair["one"] else f"default WORKERS=auto ({workers} workers)"
            rows.append([label, str(r["concurrency"]), str(r["provider"]["requests"]), str(r["provider"]["documents"]),
                         str(r["provider"]["search_units"]), str(int(host.get("host_hits_total", 0))),
                         str(int(host.get("host_waits_total", 0))), str(int(host.get("host_gave_up_total", 0))),
                         ", ".join(f"{k} {v}" for k, v in sorted(r["x_rerank"].items())),
                         ms(r["search_latency_ms"].get("p50")), ms(r["search_latency_ms"].get("p99"))])
    met = all(p["met"] for p in pairs)
    checks = "; ".join(f"concurrency {p['concurrency']}: {p['calls'][1]} vs {p['calls'][0]} requests, "
                       f"{p['documents'][1]} vs {p['documents'][0]} documents" for p in pairs)
    return ("\n\nOne worker against the shipped default, on the same log (each search on a new connection, so "
            "the kernel spreads them over the workers; host hits = scores one worker found that another "
            "paid for; waits = scores another worker's provider call answered while this one waited for it):\n\n"
            + md_table(["set-up", "concurrency", "provider requests", "documents sent", "search units", "host hits",
                        "host waits", "gave up waiting", "X-Rerank", "search p50 ms", "search p99 ms"], rows)
            + f"\n\nTarget: several workers make no more provider calls than one: {checks}: {yes(met)}.")


def memory_tables(d: dict[str, Any]) -> str:
    r = d["rss_mib"]
    p = d["params"]
    rows = [["RSS at start (idle, after start-up)", ms(r["first"], 1)],
            ["RSS when the cache reached its bound", f"{ms(r['at_cache_full'], 1)} (at {d['cache_full_at_s']} s)"],
            ["RSS min / max after the cache was full",
             f"{ms(r['min_after_cache_full'], 1)} / {ms(r['max_after_cache_full'], 1)}"],
            ["RSS at the end", ms(r["last"], 1)],
            ["peak (VmHWM)", ms(r["hwm"], 1)],
            ["RSS slope over the second half of the run", f"{ms(d['rss_slope_second_half_mib_per_min'], 3)} MiB/min"]]
    load_rows = [[k, v["requests"], ", ".join(f"{s}: {n}" for s, n in v["status"].items()),
                  ms(v["latency_ms"].get("p50")), ms(v["latency_ms"].get("p99"))] for k, v in d["load"].items()]
    return (f"{machine_block(d['machine'])} Engine: {d['engine']}. Duration {p['duration']:.0f} s "
            f"({p['duration'] / 60:.1f} min), concurrency {p['concurrency']}, "
            f"CACHE_MAX_ENTRIES={p['cache_max_entries']}, "
            f"RSS sampled every {p['interval']:.0f} s, test provider delay {p['provider_delay_ms']:.0f} ms. "
            f"{differs_sentence(recorded_differs(d))}\n\n"
            + md_table(["measure", "MiB"], rows) + "\n\n"
            + md_table(["requests", "count", "HTTP status", "p50 ms", "p99 ms"], load_rows))


def warming_tables(d: dict[str, Any]) -> str:
    checkpoints = d["params"]["checkpoints"]
    rows = []
    for run in d["runs"]:
        by_at = {p["at_s"]: p for p in run["passes"]}
        rows.append([run["busy"], *[f"{by_at[c]['reranked_share']:.0%}, {by_at[c].get('partial_share', 0):.0%} partly "
                                    f"({by_at[c]['gain']:+.3f}; "
                                    f"{by_at[c].get('store_rows_before', '?')} vectors)" if c in by_at else ""
                                    for c in checkpoints]])
    table = md_table(["busy processes", *[f"after {c:.0f} s" for c in checkpoints]], rows)
    return (f"{machine_block(d['machine'])} {differs_sentence(recorded_differs(d))} Each cell: the share of the "
            f"{d['queries']} queries reranked in the pass begun then (and of them, those partly: cold hits "
            f"kept in their lexical places, `vectors_partial`), its nDCG@10 gain over the engine's "
            f"{d['engine_ndcg@10']:.4f}, and the vectors the store held when the pass began.\n\n{table}")


def profile_tables(d: dict[str, Any]) -> str:
    out = [machine_block(d["machine"], differs_sentence(recorded_differs(d)))]
    for name, label in (("passthrough_get_c32", "pass-through GET, c=32"),
                        ("passthrough_bulk_c32", "pass-through _bulk, c=32"),
                        ("cache_miss_c32", "reranked search, cache miss, c=32"),
                        ("cache_hit_c32", "reranked search, cache hit, c=32")):
        r = d.get(name)
        if not r:
            continue
        load = r["load"]
        out.append(f"\n**{label}** ({load['rps']:.0f} req/s during sampling; the proxy process used "
                   f"{r['cpu_share_of_one_core']:.2f} of a core; {r['samples']} samples; raw stacks: `{r['raw']}`)\n")
        rows = [[n, f"{p}%"] for n, _, p in r["top_self"][:12]]
        out.append(md_table(["top frames by own time (function, file)", "share of samples"], rows))
        inclusive = r["top_inclusive"]
        raw = REPO / r["raw"]
        if raw.exists():  # the summary keeps 25 frames; the raw stacks give the deeper ones
            from .profile import summarise
            inclusive = summarise(raw, r["duration_s"], r["rate_hz"], 0.0, top=200)["top_inclusive"]
        skip = ("main (", "run (rerank_proxy/serve.py)", "ProxyApp.__call__", "<module>")
        incl = [[n, f"{p}%"] for n, _, p in inclusive
                if any(k in n for k in ("proxy/", "httpx/", "httpcore/", "aiohttp/client.py", "cachetools/"))
                and not n.startswith(skip)][:16]
        out.append("\n" + md_table(["proxy code, HTTP clients and cache library, inclusive", "share of samples"], incl))
        if "test_provider" in r:
            out.append(f"\n(The Cohere-protocol test server used {r['test_provider']['cpu_share_of_one_core']:.2f} "
                       f"of a core meanwhile.)")
    return "\n".join(out)


def summary_table(pt, sl, co, me) -> str:
    rows = []
    if pt:
        for c in pt["checks"]:
            rows.append(["pass-through", c["check"],
                         f"{c['value_ms']:+.2f} ms" if "value_ms" in c else f"{c['value']:.2f}x",
                         yes(c["met"]), _run("passthrough", pt)])
    if sl and "cache_hit" in sl:
        for t in sl["cache_hit"].get("targets", [sl["cache_hit"]["target"]]):
            rows.append(["search, cache hit", t["check"], f"{t['value']:.2f}x", yes(t["met"]),
                         _run("search_latency", sl)])
    if sl and "cache_miss_checks" in sl:
        for c in sl["cache_miss_checks"]:
            rows.append(["search, cache miss", c["check"], f"p50 {c['p50']:.2f} ms, p99 {c['p99']:.2f} ms",
                         yes(c["met"]), _run("search_latency", sl)])
    if co:
        t = co["target"]
        rows.append(["cost", "in-process cache at least halves provider requests (vs CACHE_MAX_ENTRIES=0)",
                     f"{t['in_process_calls_vs_no_cache']:.2f}x", yes(t["halved"]), _run("cost", co)])
        for pair in co.get("workers_target", []):
            rows.append(["cost", f"WORKERS=auto ({pair['workers']}) makes no more provider requests than 1 worker, "
                                 f"concurrency {pair['concurrency']}",
                         f"{pair['calls'][1]} vs {pair['calls'][0]} requests, "
                         f"{pair['documents'][1]} vs {pair['documents'][0]} documents", yes(pair["met"]),
                         _run("cost", co)])
    if me:
        r = me["rss_mib"]
        rows.append(["memory", f"RSS flat once the cache is full ({me['params']['duration'] / 60:.0f} min run)",
                     f"{ms(r['min_after_cache_full'], 1)}-{ms(r['max_after_cache_full'], 1)} MiB after the cache "
                     f"filled; slope {ms(me['rss_slope_second_half_mib_per_min'], 3)} MiB/min over the second half",
                     "see Memory", _run("memory", me)])
    commands = {module: _command(module, data) for module, data in
                (("passthrough", pt), ("search_latency", sl), ("cost", co), ("memory", me)) if data}
    return (md_table(["benchmark", "target", "measured", "result", "run"], rows)
            + "\n\n`shipped defaults` and `default` rows run with nothing set but the engine (and the provider "
            "under test where one is named): two workers here, access lines on. "
            + "The runs, each with the command that produced it:\n\n"
            + "\n".join(f"- `bench.{module}`: `{command}`" for module, command in commands.items()))


def _command(module: str, data: dict[str, Any]) -> str:
    """The command line that produced a result, from the flags it recorded."""
    flags = " ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                     for k, v in (data.get("params") or {}).items() if v not in (None, False, True))
    return f"python -m bench.{module} {flags}".strip()


def _run(module: str, data: dict[str, Any]) -> str:
    """Which run a summary row comes from: the module and when it ran."""
    when = (data.get("machine") or {}).get("when", "")
    return f"`bench.{module}` {when}".strip()


def images(*names: str) -> str:
    return "\n\n".join(f"![{n}](bench/results/{n})" for n in names if n)


def fill(doc: str, name: str, content: str) -> str:
    pattern = re.compile(rf"(<!-- BEGIN:{name} -->\n)(?:.*?\n)?(<!-- END:{name} -->)", re.S)
    if not pattern.search(doc):
        log(f"BENCHMARKS.md has no block {name}; skipped")
        return doc
    return pattern.sub(lambda m: m.group(1) + content.rstrip("\n") + "\n" + m.group(2), doc)


def passthrough_block(d: dict[str, Any]) -> dict[str, str]:
    return {"passthrough": passthrough_tables(d) + "\n\n" + images(plot_passthrough(d))}


def search_blocks(d: dict[str, Any]) -> dict[str, str]:
    imgs = plot_search(d)
    blocks = {}
    if "cache_hit" in d:
        blocks["search_hit"] = search_hit_tables(d) + "\n\n" + images(*[i for i in imgs if "hit" in i])
    if "cache_miss" in d:
        blocks["search_miss"] = search_miss_tables(d) + "\n\n" + images(*[i for i in imgs if "miss" in i])
    return blocks


def cost_block(d: dict[str, Any]) -> dict[str, str]:
    return {"cost": cost_tables(d) + "\n\n" + images(*plot_cost(d))}


def memory_block(d: dict[str, Any]) -> dict[str, str]:
    return {"memory": memory_tables(d) + "\n\n" + images(plot_memory(d))}


def scaling_block(d: dict[str, Any]) -> dict[str, str]:
    return {"scaling": scaling_tables(d) + "\n\n" + images(plot_scaling(d))}


def warming_block(d: dict[str, Any]) -> dict[str, str]:
    return {"warming": warming_tables(d) + "\n\n" + images(plot_warming(d))}


def profile_block(d: dict[str, Any]) -> dict[str, str]:
    return {"profile": profile_tables(d)}


# Each results file of the standing benchmarks -> the BENCHMARKS.md blocks made from it (plots included).
# The one-off experiments (bench/revisions.py, bench/host_tier.py, ...) are not here: their figures are on
# their docs/decisions/ pages, and each script prints its own table.
RESULT_BLOCKS: dict[str, Callable[[dict[str, Any]], dict[str, str]]] = {
    "passthrough.json": passthrough_block,
    "search_latency.json": search_blocks,
    "cost.json": cost_block,
    "memory.json": memory_block,
    "scaling.json": scaling_block,
    "profile.json": profile_block,
    "warming.json": warming_block,
}


def main() -> None:
    doc = DOC.read_text()
    results = {name: load(name) for name in RESULT_BLOCKS}
    blocks: dict[str, str] = {}
    for name, render in RESULT_BLOCKS.items():
        data = results[name]
        if data:
            blocks.update(render(data))
    blocks["summary"] = summary_table(results["passthrough.json"], results["search_latency.json"],
                                      results["cost.json"], results["memory.json"])
    for name, content in blocks.items():
        doc = fill(doc, name, content)
    DOC.write_text(doc)
    log(f"updated {DOC.name}: {', '.join(blocks)}")

if __name__ == "__main__":
    main()
