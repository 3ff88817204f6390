"""The online experiment with simulated users, on the shipped defaults from a cold start, per engine.

For each engine (Elasticsearch on port 9400, OpenSearch on 9401, started by the engine runner):
a fresh index and a fresh vector store, the Cranfield collection written through the proxy (write
warming embeds it), then the four runs of `rerank-proxy demo --experiment`
(rerank_proxy/demo_experiment.py): A/B, interleaving, and their A/A controls, each through a proxy
of its own. Settings that differ from the shipped defaults: UPSTREAM_URLS, LOCAL_VECTOR_STORE (a
fresh file), and per run RERANK_EXPERIMENT, UBI_QUERIES_INDEX and a generated ADMIN_TOKEN.

    .venv/bin/python -m bench.experiment_sim [--engines elasticsearch,opensearch] [--searches N]

Writes bench/results/experiment_sim.json and bench/results/experiment_sim.png (the intervals).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import DATASET, engine_version, log, machine_info, save_json, start_engine
from bench.report import save_figure
from rerank_proxy.config import Settings, load_settings
from rerank_proxy.demo_eval import load_collection
from rerank_proxy.demo_experiment import ModeResult, interval_plot, run_modes, table, verdict

PORTS = {"elasticsearch": 9400, "opensearch": 9401}


@contextmanager
def _proxy(settings: Settings) -> Iterator[str]:
    from rerank_proxy.app import ProxyApp
    from rerank_proxy.edge import BackgroundServer

    server = BackgroundServer(ProxyApp(settings)).start()
    try:
        yield server.url
    finally:
        server.stop()


def _progress(name: str) -> Any:
    def show(done: int, total: int) -> None:
        if done == total or done % 1000 == 0:
            log(f"{name}: {done}/{total} searches")
    return show


def run_engine(kind: str, searches: int | None) -> tuple[dict[str, Any], list[ModeResult]]:
    url = start_engine(kind, PORTS[kind])
    collection = load_collection(DATASET)
    with tempfile.TemporaryDirectory(prefix="bench-experiment-") as scratch:
        settings = load_settings({"UPSTREAM_URLS": url, "LOCAL_VECTOR_STORE": str(Path(scratch) / "vectors.sqlite")})
        results = list(run_modes(url, settings, collection, _proxy, searches=searches, index="bench-experiment",
                                 say=lambda m: log(f"{kind}: {m}"), progress=_progress))
    rows = [{"run": r.mode.name, "experiment": r.mode.experiment, "lexical_only": r.mode.lexical_only,
             "searches": r.run.searches, "clicks": r.run.clicks, "arms": r.run.arms, "seconds": round(r.run.seconds, 1),
             "verdict": verdict(r), "report": r.run.report} for r in results]
    return {"engine": kind, "version": engine_version(url), "runs": rows}, results


def plot(per_engine: list[tuple[str, list[ModeResult]]]) -> str:
    from bench.report import _plt

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for ax, key, null, title in ((axes[0], "ab", 0.0, "A/B: CTR@10 reranked - lexical"),
                                 (axes[1], "interleaving", 0.5, "interleaving: reranked preference")):
        labels: list[str] = []
        for kind, results in per_engine:
            for r in results:
                part = r.run.report.get(key)
                if not part or not part.get("interval"):
                    continue
                centre = part["difference" if key == "ab" else "preference"]
                y = len(labels)
                ax.plot([part["interval"]["low"], part["interval"]["high"]], [y, y], lw=3)
                ax.plot([centre], [y], "ko")
                labels.append(f"{kind} {r.mode.name}")
        ax.axvline(null, color="grey", ls="--")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, "experiment_sim.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="elasticsearch,opensearch")
    parser.add_argument("--searches", type=int, default=None, help="every run's searches (default: each run's own)")
    args = parser.parse_args()
    data: dict[str, Any] = {"machine": machine_info(), "settings_differing": [
        "UPSTREAM_URLS", "LOCAL_VECTOR_STORE (fresh)", "RERANK_EXPERIMENT", "UBI_QUERIES_INDEX", "ADMIN_TOKEN"],
        "engines": []}
    per_engine = []
    for kind in args.engines.split(","):
        entry, results = run_engine(kind, args.searches)
        data["engines"].append(entry)
        per_engine.append((kind, results))
        print(f"\n{kind} {entry['version']}\n{table(results)}\n{interval_plot(results)}\n", flush=True)
    data["plot"] = plot(per_engine)
    save_json("experiment_sim.json", data)


if __name__ == "__main__":
    main()
