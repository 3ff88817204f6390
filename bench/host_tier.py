"""Where the workers of one host share scores: the cost of each candidate next to the in-process tier.

The candidates for the per-host tier (rerank_proxy/scoring/cache/host_share.py): LMDB (the shipped
`HostTier`) and SQLite in WAL mode (the same rules, written here: TTL per entry, the oldest writes
evicted past the bound, claims in a table), with the in-process `LocalTier` as the baseline. Each
holds `--entries` scores (the default CACHE_MAX_ENTRIES) before timing starts, so writes pay for
eviction as they do in steady state. Per round, each candidate: a lookup of 100 stored keys, a
lookup of 100 absent keys, a write of 100 new scores, and (the host tiers) a claim of 100 keys;
rounds interleave the candidates so machine load hits them alike. SQLite is also timed through
`asyncio.to_thread`, the price of keeping its file I/O off the event loop. Last, the wake-up
latency: from one worker storing a score another waits for, to the waiter's event loop running
again (host_signals.py, measured within one process, through the kernel's Unix socket); and how
much of its speed the event loop's thread keeps while LMDB writes run in another thread.

    .venv/bin/python -m bench.host_tier [--entries 200000] [--rounds 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sqlite3
import statistics
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lmdb

from bench.common import log, machine_info, save_json
from rerank_proxy.scoring.cache.host_signals import HostSignals
from rerank_proxy.scoring.cache.host_tier import HostTier
from rerank_proxy.scoring.cache.local_tier import LocalTier

BATCH = 100
TTL_S = 3600.0


class SqliteTier:
    """The SQLite candidate: one WAL file shared by the workers, the same rules as HostTier."""

    def __init__(self, directory: Path, max_entries: int) -> None:
        self.max_entries = max_entries
        self.conn = sqlite3.connect(directory / "scores.sqlite", isolation_level=None, check_same_thread=False,
                                    timeout=5)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=OFF")  # a cache that dies with the process tree
        self.conn.executescript("""
            CREATE TABLE IF NOT EXISTS scores (id INTEGER PRIMARY KEY, key BLOB NOT NULL UNIQUE,
                                               score REAL NOT NULL, expires REAL NOT NULL);
            CREATE TABLE IF NOT EXISTS claims (key BLOB PRIMARY KEY, owner INTEGER NOT NULL,
                                               until REAL NOT NULL) WITHOUT ROWID;""")
        self.token = 0

    def get_many(self, keys: Sequence[bytes]) -> list[float | None]:
        rows = self.conn.execute(f"SELECT key, score FROM scores WHERE key IN ({','.join('?' * len(keys))}) "
                                 "AND expires > ?", (*keys, time.monotonic())).fetchall()
        found = dict(rows)
        return [found.get(k) for k in keys]

    def set_many(self, items: list[tuple[bytes, float]]) -> None:
        expires = time.monotonic() + TTL_S
        marks = ",".join("?" * len(items))
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT OR REPLACE INTO scores (key, score, expires) VALUES (?, ?, ?)",
                         [(k, v, expires) for k, v in items])
        conn.execute(f"DELETE FROM claims WHERE key IN ({marks})", [k for k, _ in items])
        conn.execute("DELETE FROM scores WHERE id <= (SELECT max(id) FROM scores) - ?", (self.max_entries,))
        conn.execute("COMMIT")

    def claim(self, keys: Sequence[bytes], lease_s: float) -> int:
        now = time.monotonic()
        self.token += 1
        marks = ",".join("?" * len(keys))
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        found = conn.execute(f"SELECT key FROM scores WHERE key IN ({marks}) AND expires > ?", (*keys, now)).fetchall()
        conn.execute(f"DELETE FROM claims WHERE key IN ({marks}) AND until <= ?", (*keys, now))
        conn.executemany("INSERT OR IGNORE INTO claims (key, owner, until) VALUES (?, ?, ?)",
                         [(k, self.token, now + lease_s) for k in keys])
        mine = conn.execute(f"SELECT count(*) FROM claims WHERE key IN ({marks}) AND owner = ?",
                            (*keys, self.token)).fetchone()[0]
        conn.execute(f"DELETE FROM claims WHERE key IN ({marks})", keys)  # the next round claims afresh
        conn.execute("COMMIT")
        return len(found) + int(mine)


def batch(tag: str, start: int) -> list[bytes]:
    """One search's keys, as `ScoreCache.doc_keys` makes them: a head naming the query, then the text's part."""
    head = hashlib.blake2b(f"{tag}@{start}".encode(), digest_size=6).digest()
    return [head + hashlib.blake2b(f"{tag}-{i}".encode(), digest_size=10).digest() for i in range(start, start + BATCH)]


def fill(set_many: Callable[[list[tuple[bytes, float]]], Any], entries: int) -> deque[list[bytes]]:
    stored: deque[list[bytes]] = deque()
    for start in range(0, entries, BATCH):
        keys = batch("stored", start)
        set_many([(k, 0.5) for k in keys])
        stored.append(keys)
    return stored


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"p50_us": statistics.median(ordered), "p90_us": ordered[int(0.9 * len(ordered))],
            "p99_us": ordered[int(0.99 * len(ordered))]}


async def wake_latency(directory: Path, samples: int) -> dict[str, float]:
    """Store-and-wake to waiter running, through the kernel's Unix datagram socket and the event loop."""
    waiter = HostSignals(directory)
    waiter.start()
    sender = HostSignals(directory)
    times = []
    try:
        for i in range(samples):
            key = i.to_bytes(16, "big")
            with waiter.watch([key]) as watch:
                started = time.perf_counter()
                sender.wake({os.getpid(): [key]})
                assert await watch.wait(5.0)
                times.append((time.perf_counter() - started) * 1e6)
    finally:
        sender.close()
        waiter.close()
    return summary(times)


def loop_share_during_threaded_writes(host: HostTier, writes: int = 300) -> float:
    """How fast the main thread runs Python while another thread writes to LMDB, against alone:
    what moving the writes off the event loop would give back (py-lmdb holds the GIL for most of a
    write transaction)."""
    def spin(seconds: float) -> float:
        count, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            count += 1
        return count / seconds

    alone = spin(0.5)
    batches = [[(k, 0.5) for k in batch("threaded", i * BATCH)] for i in range(writes)]
    writer = threading.Thread(target=lambda: [host.set_many(b) for b in batches])
    writer.start()
    started = time.perf_counter()
    count = 0
    while writer.is_alive():
        count += 1
    during = count / (time.perf_counter() - started)
    writer.join()
    return during / alone


def round_keys(op: str, name: str, round_no: int, live: deque[list[bytes]]) -> list[bytes]:
    """The 100 keys one operation of one round works on: a batch still stored (get_hit), a batch never
    written (get_miss), or a new batch (set, claim); a set's batch joins what is stored."""
    if op == "get_hit":
        return live[(round_no * 7919) % len(live)]
    if op == "get_miss":
        return batch("absent", round_no * BATCH)
    keys = batch(f"{op}-{name}", round_no * BATCH)
    if op == "set":  # the oldest batch is evicted: look up only what is still stored
        live.append(keys)
        if live.maxlen is None:
            live.popleft()
    return keys


async def timed_call_us(fn: Callable[[list[bytes]], Any], keys: list[bytes]) -> tuple[float, Any]:
    """(microseconds, result) of one operation; one that runs off the loop is awaited within the time."""
    started = time.perf_counter()
    result = fn(keys)
    if asyncio.iscoroutine(result):
        result = await result
    return (time.perf_counter() - started) * 1e6, result


async def interleaved_rounds(ops: dict[str, dict[str, Callable[[list[bytes]], Any]]],
                             stored: dict[str, deque[list[bytes]]], rounds: int) -> dict[str, dict[str, list[float]]]:
    """Each round runs every operation of every candidate once, so machine load hits them alike."""
    times: dict[str, dict[str, list[float]]] = {name: {op: [] for op in table} for name, table in ops.items()}
    for r in range(rounds):
        for name, table in ops.items():
            for op, fn in table.items():
                elapsed, result = await timed_call_us(fn, round_keys(op, name, r, stored[name]))
                if op == "get_hit":
                    assert all(v is not None for v in result), name
                times[name][op].append(elapsed)
    return times


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    machine = machine_info()
    root = Path(tempfile.mkdtemp(prefix="host-tier-bench-"))
    (root / "lmdb").mkdir()
    (root / "sqlite").mkdir()
    local: LocalTier[bytes, float] = LocalTier(args.entries, TTL_S)
    host = HostTier(root / "lmdb", max_entries=args.entries, ttl_s=TTL_S)
    sql = SqliteTier(root / "sqlite", args.entries)
    log(f"filling each candidate with {args.entries:,} scores")
    stored = {"in-process LocalTier": fill(local.set_many, args.entries),
              "LMDB (HostTier)": fill(host.set_many, args.entries), "SQLite WAL": fill(sql.set_many, args.entries)}
    stored["SQLite WAL, off the loop"] = stored["SQLite WAL"]
    # LMDB evicts half its bound at a time: of what was written, only the newest generation is sure to be held.
    held = max(1, host.generation_size // BATCH - 1)
    stored["LMDB (HostTier)"] = deque(list(stored["LMDB (HostTier)"])[-held:], maxlen=held)

    async def off_loop(fn: Callable[..., Any], *a: Any) -> Any:
        return await asyncio.to_thread(fn, *a)

    ops: dict[str, dict[str, Callable[[list[bytes]], Any]]] = {
        "in-process LocalTier": {"get_hit": local.get_many, "get_miss": local.get_many,
                                 "set": lambda ks: local.set_many([(k, 0.25) for k in ks])},
        "LMDB (HostTier)": {"get_hit": host.get_many, "get_miss": host.get_many,
                            "set": lambda ks: host.set_many([(k, 0.25) for k in ks]),
                            "claim": lambda ks: host.release(ks, host.claim(ks, 5.0).token)},
        "SQLite WAL": {"get_hit": sql.get_many, "get_miss": sql.get_many,
                       "set": lambda ks: sql.set_many([(k, 0.25) for k in ks]),
                       "claim": lambda ks: sql.claim(ks, 5.0)},
        "SQLite WAL, off the loop": {"get_hit": lambda ks: off_loop(sql.get_many, ks),
                                     "get_miss": lambda ks: off_loop(sql.get_many, ks),
                                     "set": lambda ks: off_loop(sql.set_many, [(k, 0.25) for k in ks])},
    }
    log(f"timing {args.rounds} interleaved rounds")
    times = await interleaved_rounds(ops, stored, args.rounds)
    rows = {name: {op: summary(t) for op, t in ops_times.items()} for name, ops_times in times.items()}
    sizes = {"LMDB (HostTier)": (root / "lmdb" / "data.mdb").stat().st_blocks * 512,
             "SQLite WAL": sum(p.stat().st_blocks * 512 for p in (root / "sqlite").iterdir())}
    wake = await wake_latency(root, args.wake_samples)
    threaded = loop_share_during_threaded_writes(host)
    machine["loadavg_at_end"] = list(os.getloadavg())
    return {"machine": machine, "params": vars(args), "rows": rows, "disk_bytes": sizes, "wake_us": wake,
            "loop_share_during_threaded_lmdb_writes": threaded,
            "lmdb": lmdb.__version__, "sqlite": sqlite3.sqlite_version, "directory": str(root.parent)}


def table(result: dict[str, Any]) -> str:
    ops = (("get_hit", "lookup 100 stored"), ("get_miss", "lookup 100 absent"), ("set", "write 100"),
           ("claim", "claim 100"))
    lines = ["| candidate | " + " | ".join(f"{label} p50 / p90 µs" for _, label in ops) + " | on disk |",
             "| --- |" + " --- |" * (len(ops) + 1)]
    for name, row in result["rows"].items():
        cells = [f"{row[op]['p50_us']:.0f} / {row[op]['p90_us']:.0f}" if op in row else "-" for op, _ in ops]
        size = result["disk_bytes"].get(name)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {size / 2**20:.0f} MiB |" if size else
                     f"| {name} | " + " | ".join(cells) + " | - |")
    wake = result["wake_us"]
    lines.append("")
    lines.append(f"Wake-up, store to waiter running: p50 {wake['p50_us']:.0f} µs, p90 {wake['p90_us']:.0f} µs, "
                 f"p99 {wake['p99_us']:.0f} µs ({result['params']['wake_samples']} samples).")
    lines.append(f"LMDB writes in another thread leave the event loop's thread "
                 f"{100 * result['loop_share_during_threaded_lmdb_writes']:.0f}% of its speed alone.")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entries", type=int, default=200_000, help="scores held by each candidate (default 200000)")
    p.add_argument("--rounds", type=int, default=2000)
    p.add_argument("--wake-samples", type=int, default=2000)
    return p


def main() -> None:
    args = parser().parse_args()
    result = asyncio.run(measure(args))
    save_json("host_tier.json", result)
    print(table(result))


if __name__ == "__main__":
    main()
