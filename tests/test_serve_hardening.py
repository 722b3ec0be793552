"""kangaroo-serve under abuse and at shutdown, through a real uvicorn server (raw HTTP where the wire matters).

Big bodies get 413 while other routes keep answering; tokenization never blocks the event loop; internal errors count
as 500 in /metrics; SIGTERM under load answers every request (503s, a stream's error event and ``[DONE]``), without
a traceback in the log.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest
from test_serve import (DEADLINE, LONG, LONG_PROMPT, MODEL, _up, client, engine_dir, metric, serving,  # noqa: F401
                        wait_for)

CHAT = {"model": MODEL, "max_tokens": 4, "temperature": 0}


def chat_body(content: str) -> dict:
    return {**CHAT, "messages": [{"role": "user", "content": content}]}


class HealthWatch:
    """Polls /health in a thread while a block runs; ``slowest`` is the longest answer time (None: one failed)."""

    def __init__(self, url: str) -> None:
        self.url, self.times, self.failed, self._stop = url, [], 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                ok = httpx2.get(f"{self.url}/health", timeout=2).status_code == 200
            except httpx2.TransportError:
                ok = False
            self.times.append(time.monotonic() - t)
            self.failed += not ok
            self._stop.wait(0.05)

    def __enter__(self) -> "HealthWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def test_big_bodies_get_413_at_once_while_health_answers(engine_dir):
    with serving(engine_dir, max_body_mb=1) as (url, _app):
        big = json.dumps(chat_body("hello world " * 900_000)).encode()  # 10.8 MB
        with HealthWatch(url) as health:
            t = time.monotonic()
            declared = httpx2.post(f"{url}/v1/chat/completions", content=big, headers={"content-type": "application/json"},
                                   timeout=30)
            declared_s = time.monotonic() - t

            def chunks():  # no Content-Length: counted as it arrives
                for i in range(0, len(big), 1 << 16):
                    yield big[i:i + (1 << 16)]

            chunked = httpx2.post(f"{url}/v1/chat/completions", content=chunks(),
                                  headers={"content-type": "application/json"}, timeout=30)
            time.sleep(0.2)
        for response in (declared, chunked):
            assert response.status_code == 413, response.text[:300]
            error = response.json()["error"]
            assert error["code"] == "request_too_large" and "1 MB" in error["message"] and error["type"]
        assert declared_s < 3  # refused on its Content-Length, not after tokenizing it (many seconds)
        assert health.failed == 0 and len(health.times) >= 2 and max(health.times) < 1.0, health.times
        assert metric(url, "kangaroo_requests_total", path="/v1/chat/completions", status="413") == 2
        ok = httpx2.post(f"{url}/v1/chat/completions", json=chat_body("hi"), timeout=30)  # the server keeps serving
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize("path, body, param", [
    ("chat/completions", chat_body("hello world " * 250_000), "messages"),  # 3 MB: under the body limit
    ("completions", {**CHAT, "prompt": "hello world " * 250_000}, "prompt"),
])
def test_text_far_past_the_context_is_refused_before_it_is_tokenized(engine_dir, path, body, param):
    with serving(engine_dir) as (url, _app), HealthWatch(url) as health:
        t = time.monotonic()
        response = httpx2.post(f"{url}/v1/{path}", json=body, timeout=60)
        elapsed = time.monotonic() - t
        time.sleep(0.2)
    assert response.status_code == 400, response.text[:300]
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == param
    assert "3000000 characters" in error["message"] and "--max-seq-len" not in error["message"]
    assert elapsed < 3  # tokenizing 3 MB takes the tiny tokenizer about 5 s
    assert health.failed == 0 and max(health.times) < 1.0, health.times


def test_tokenization_runs_off_the_event_loop(engine_dir):
    """While a prompt is being encoded (held here at a gate), other routes keep answering."""
    with serving(engine_dir) as (url, app):
        engine = app.state.pool.workers[0].engine
        entered, gate, real = threading.Event(), threading.Event(), engine.encode

        def encode(*args, **kwargs):
            entered.set()
            assert gate.wait(DEADLINE), "the test never opened the gate"
            return real(*args, **kwargs)

        engine.encode = encode
        try:
            with ThreadPoolExecutor(1) as threads:
                reply = threads.submit(httpx2.post, f"{url}/v1/chat/completions", json=chat_body("hi"), timeout=DEADLINE)
                assert entered.wait(DEADLINE)
                t = time.monotonic()
                health = httpx2.get(f"{url}/health", timeout=2)  # a blocked event loop makes this time out
                assert health.status_code == 200 and health.json()["busy"] == 1 and time.monotonic() - t < 1
                gate.set()
                assert reply.result(timeout=DEADLINE).status_code == 200
        finally:
            gate.set()
            del engine.encode


def test_internal_errors_count_as_500_not_499(engine_dir):
    with serving(engine_dir) as (url, app):
        deep = app.state.pool.workers[0].engine.decoder.deep

        def broken(*args, **kwargs):
            raise RuntimeError("injected fault")

        deep.run = broken
        try:
            response = httpx2.post(f"{url}/v1/chat/completions", json=chat_body("hi"), timeout=DEADLINE)
        finally:
            del deep.run
        assert response.status_code == 500 and response.json()["error"]["type"] == "server_error"
        assert metric(url, "kangaroo_requests_total", path="/v1/chat/completions", status="500") == 1
        assert metric(url, "kangaroo_requests_total", path="/v1/chat/completions", status="499") == 0
        assert metric(url, "kangaroo_errors_total", kind="internal") == 1


# The real kangaroo-serve in its own process, each deep pass slowed to 20 ms so that a LONG generation runs for
# seconds (the tiny model would otherwise finish it in well under one).
SLOW_SERVE = """
import time
from kangaroo_trt.serve.worker import Worker

_open = Worker.open.__func__

def slow_open(cls, *args, **kwargs):
    worker = _open(cls, *args, **kwargs)
    deep = worker.engine.decoder.deep
    run = deep.run
    def slow(*a, **k):
        time.sleep(0.02)
        return run(*a, **k)
    deep.run = slow
    return worker

Worker.open = classmethod(slow_open)
from kangaroo_trt.cli.serve_cli import main
main()
"""
SHUTDOWN_TIMEOUT = 1.0


def _post(url: str, path: str, body: dict) -> tuple[float, int, str, bytes]:
    """(seconds since the epoch when the answer ended, status, content type, body)."""
    with httpx2.stream("POST", f"{url}/v1/{path}", json=body, timeout=DEADLINE) as response:
        data = response.read()
    return time.time(), response.status_code, response.headers.get("content-type", ""), data


def _events(data: bytes) -> list[str]:
    return [line.removeprefix("data: ") for line in data.decode().split("\n\n") if line.startswith("data: ")]


def test_cli_serves_and_sigterm_under_load_answers_every_request(engine_dir):
    """The real command serves; then, 2 engines, 2 requests running (one streamed) and 2 queued, SIGTERM: the queued
    ones get 503 JSON at once, the running ones get SHUTDOWN_TIMEOUT to finish, then a 503 JSON (plain) or an error
    event and [DONE] (stream), and the process exits, without a traceback in its log."""
    process = subprocess.Popen([sys.executable, "-c", SLOW_SERVE, "--engine-dir", str(engine_dir), "--port", "0",
                                "--workers", "2", "--threads", "1", "--max-queue", "4", "--shutdown-timeout",
                                str(SHUTDOWN_TIMEOUT), "--model-name", MODEL], stderr=subprocess.PIPE, text=True)
    try:
        url = re.search(r"http://\S+", process.stderr.readline()).group(0)
        wait_for(lambda: _up(url), "the server to answer")
        assert client(url).completions.create(model=MODEL, prompt="hello", max_tokens=3).choices[0].text
        long = {"prompt": LONG_PROMPT, "max_tokens": LONG, "temperature": 0}
        health = lambda: httpx2.get(f"{url}/health", timeout=5).json()  # noqa: E731
        with ThreadPoolExecutor(4) as threads:
            running_stream = threads.submit(_post, url, "completions", {**long, "stream": True})
            running_plain = threads.submit(_post, url, "completions", long)
            wait_for(lambda: health()["busy"] == 2, "both engines to be busy")
            queued = [threads.submit(_post, url, "completions", long),
                      threads.submit(_post, url, "chat/completions",
                                     {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True})]
            wait_for(lambda: health()["queued"] == 2, "two requests to wait in the queue")
            signalled = time.time()
            process.send_signal(signal.SIGTERM)
            answers = [f.result(timeout=DEADLINE) for f in (*queued, running_plain, running_stream)]
        for ended, status, content_type, data in answers[:3]:  # the queued two, then the running plain request
            assert status == 503 and content_type == "application/json", data
            error = json.loads(data)["error"]
            assert error["type"] == "server_error" and error["code"] == "shutting_down" and error["message"]
        assert all(ended - signalled < SHUTDOWN_TIMEOUT for ended, *_ in answers[:2])  # at once, not at the deadline
        assert SHUTDOWN_TIMEOUT - 0.2 < answers[2][0] - signalled < SHUTDOWN_TIMEOUT + 3  # stopped at the deadline
        ended, status, content_type, data = answers[3]
        events = _events(data)
        assert status == 200 and content_type.startswith("text/event-stream")
        assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "shutting_down", events[-3:]
        assert len(events) > 3 and all("choices" in json.loads(e) for e in events[:-2])  # pieces, then the error
        assert process.wait(timeout=DEADLINE) == -signal.SIGTERM  # uvicorn re-raises the signal once it has shut down
        assert time.time() - signalled < SHUTDOWN_TIMEOUT + 5  # the deadline plus the shutdown's own steps
        log = process.stderr.read()
        assert "Traceback" not in log and "CancelledError" not in log and "Application shutdown complete" in log, log
    finally:
        if process.poll() is None:
            process.kill()
