"""The batched access-log writer on real pipes and files: nothing lost at close, whole lines, bounded."""

from __future__ import annotations

import os
import select
import threading

import orjson

from rerank_proxy.admin.access_sink import AccessSink
from tests.support_wait import wait_until


def _encode(fields, now):
    return orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_every_line_is_written_by_close_in_order(tmp_path):
    path = tmp_path / "access.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    sink = AccessSink(fd, _encode, flush_interval_s=60)
    for i in range(10_000):
        sink.emit({"i": i})
    sink.close()
    os.close(fd)
    lines = path.read_bytes().splitlines()
    assert [orjson.loads(line)["i"] for line in lines] == list(range(10_000))
    assert sink.dropped == 0


def test_a_batch_is_written_once_flush_bytes_are_waiting_without_waiting_for_the_interval():
    read, write = os.pipe()
    sink = AccessSink(write, _encode, flush_bytes=1024, flush_interval_s=3600)
    try:
        for i in range(200):   # about 2 KiB
            sink.emit({"i": i})
        readable, _, _ = select.select([read], [], [], 30)
        assert readable, "nothing written although more than flush_bytes were waiting"
    finally:
        sink.close()
        os.close(write)
        os.close(read)


def test_a_quiet_log_is_written_within_the_interval():
    read, write = os.pipe()
    sink = AccessSink(write, _encode, flush_interval_s=0.05)
    try:
        sink.emit({"only": 1})
        readable, _, _ = select.select([read], [], [], 30)
        assert readable
        assert os.read(read, 100) == b'{"only":1}\n'
    finally:
        sink.close()
        os.close(write)
        os.close(read)


def test_lines_of_several_writers_on_one_pipe_never_interleave():
    """Each write to a pipe is at most PIPE_BUF and ends at a line end, so it lands whole."""
    read, write = os.pipe()
    sinks = [AccessSink(write, _encode, flush_bytes=4096) for _ in range(3)]
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(_read_all(read)))
    reader.start()
    filler = "x" * 150
    threads = [threading.Thread(target=lambda s=s, n=n: [s.emit({"w": n, "i": i, "f": filler}) for i in range(3000)])
               for n, s in enumerate(sinks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for sink in sinks:
        sink.close()
    os.close(write)
    reader.join(timeout=60)
    os.close(read)
    lines = [orjson.loads(line) for line in received[0].splitlines()]   # a torn line would not parse
    assert len(lines) == 9000
    for n in range(3):
        assert [line["i"] for line in lines if line["w"] == n] == list(range(3000))


def test_a_stalled_reader_never_blocks_emit_and_the_loss_is_bounded_and_counted():
    read, write = os.pipe()   # nobody reads: the pipe fills (64 KiB) and the writer thread stalls
    sink = AccessSink(write, _encode, flush_bytes=4096, max_pending_bytes=256 * 1024)
    try:
        for i in range(100_000):   # about 1.5 MB: far past the pipe and the pending bound
            sink.emit({"i": i, "pad": "y" * 4})
        assert sink.pending_bytes <= 256 * 1024
        assert sink.dropped > 0
    finally:
        os.close(read)   # the stalled write fails (EPIPE), so close() returns
        sink.close()
        os.close(write)


def test_a_closed_log_counts_the_lines_it_loses_and_emit_goes_on():
    read, write = os.pipe()
    os.close(read)   # the reader is gone: writes fail with EPIPE
    sink = AccessSink(write, _encode, flush_interval_s=0.01)
    sink.emit({"lost": 1})
    wait_until(lambda: sink.dropped >= 1, "the lost line to be counted")
    sink.emit({"lost": 2})
    sink.close()
    os.close(write)
    assert sink.dropped == 2


def test_an_access_line_has_the_shape_the_formatters_give_a_logged_one():
    """Log shippers see one schema, whether a line came through `logging` or the sink."""
    import logging

    from rerank_proxy.admin.access_lines import EcsLine, JsonLine
    from rerank_proxy.admin.logs import EcsFormatter, JsonFormatter

    fields = {"method": "GET", "path": "/i/_search", "status": 200, "outcome": "reranked", "ms": 3.25,
              "bytes": 812, "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    record = logging.LogRecord("rerank_proxy.access", logging.INFO, __file__, 1, "request", None, None)
    record.fields = fields
    now = record.created
    logged_json = orjson.loads(JsonFormatter().format(record))
    sunk_json = orjson.loads(JsonLine()(fields, now))
    assert sunk_json == logged_json
    logged_ecs = orjson.loads(EcsFormatter().format(record))
    sunk_ecs = orjson.loads(EcsLine()(fields, now))
    assert sunk_ecs == logged_ecs


def test_a_non_blocking_pipe_that_fills_up_loses_nothing():
    """Another part of the process may make stderr non-blocking: the writer then waits for room
    (a full pipe answers EAGAIN) instead of dropping lines or spinning them out of order."""
    read, write = os.pipe()
    os.set_blocking(write, False)
    sink = AccessSink(write, _encode, flush_interval_s=0.05)
    received: list[bytes] = []
    try:
        for i in range(20_000):   # about 200 KiB: more than a pipe holds
            sink.emit({"i": i})
        reader = threading.Thread(target=lambda: received.append(_read_all(read)))
        reader.start()
        sink.close()
        os.close(write)
        reader.join(60)
    finally:
        os.close(read)
    assert [orjson.loads(line)["i"] for line in received[0].splitlines()] == list(range(20_000))
    assert sink.dropped == 0
