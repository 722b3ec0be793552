"""kangaroo-serve on loopback, driven by the official ``openai`` client: a real uvicorn server over a tiny engine.

Outputs are compared with the engine's own API and with ``kangaroo-run`` on the same engine directory.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx2
import openai
import pytest
from click.testing import CliRunner

from kangaroo_trt.cli import run_cli, serve_cli
from kangaroo_trt.runner.api import KangarooEngine
from kangaroo_trt.serve.app import Settings, create_app
from kangaroo_trt.serve.pool import EnginePool, open_workers
from kangaroo_trt.serve.server import BackgroundServer

PROMPT = "the quick brown fox"
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"}]
MODEL = "tiny"
MAX_SEQ_LEN = 512  # the tiny models' max_position_embeddings
LONG = 480  # tokens: a generation that runs long enough to be interrupted
LONG_PROMPT = "hello world"  # the tiny model runs to LONG tokens from it (no EOS): asserted below
DEADLINE = 30.0  # seconds any awaited server state may take to appear (a bound, not an expected duration)


@pytest.fixture(scope="module")
def engine_dir(tiny_engine) -> Path:
    return tiny_engine("llama-gqa-tied", chat=True, max_seq_len=MAX_SEQ_LEN)[0]


@pytest.fixture(scope="module")
def reference(engine_dir):
    """The engine API on the same directory: ``reference(prompt, mode=, chat=, **decoding)`` is what the server must give."""
    engine = KangarooEngine.open(engine_dir, threads=1)

    def generate(prompt, mode: str = "kangaroo", chat: bool = False, **decoding):
        return engine.generate(prompt, chat=chat, config=engine.decode_config(mode=mode, **decoding))

    yield generate
    engine.close()


@contextmanager
def serving(engine_dir, workers: int = 1, max_queue: int = 8, mode: str = "kangaroo", **settings):
    pool = EnginePool(open_workers(engine_dir, workers, threads=1), max_queue)
    app = create_app(pool, Settings(MODEL, mode=mode, **{"shutdown_timeout": 5, **settings}))
    with BackgroundServer(app) as url:
        yield url, app


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def server(engine_dir):
    """Two engines, a queue of 8."""
    with serving(engine_dir, workers=2) as (url, app):
        yield url, app


def metric(url: str, name: str, **labels) -> float:
    """One sample of the server's /metrics, parsed with prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx2.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def wait_for(condition, what: str) -> None:
    """Wait until ``condition()`` holds (the server reaches a state), failing after DEADLINE seconds."""
    end = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# --- outputs ----------------------------------------------------------------------------------------------------
def test_models_and_health(server):
    url, _ = server
    assert [m.id for m in client(url).models.list()] == [MODEL]
    health = httpx2.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["engines"] == 2 and health["busy"] == 0


def test_completion_equals_the_engine_and_kangaroo_run(server, reference, engine_dir):
    url, _ = server
    expected = reference(PROMPT, max_new_tokens=24)
    assert expected.output_ids == reference(PROMPT, max_new_tokens=24, mode="ar").output_ids
    response = client(url).completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0)
    choice = response.choices[0]
    assert choice.text == expected.text and choice.finish_reason == "length"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (len(expected.prompt_ids), 24)
    extension = response.model_extra["kangaroo"]
    assert extension["mode"] == "kangaroo" and extension["deep_passes"] == expected.stats.acceptance.rounds
    assert extension["tokens_per_deep_pass"] == pytest.approx(expected.stats.acceptance.mean_accepted)

    run = CliRunner().invoke(run_cli.main, ["--engine-dir", str(engine_dir), "--prompt", PROMPT, "--max-new-tokens", "24",
                                            "--threads", "1", "--json"])
    assert run.exit_code == 0, run.output
    assert json.loads(run.output)["text"] == choice.text

    chunks = list(client(url).completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == expected.text and len([t for t in texts if t]) > 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 24 and not chunks[-1].choices


def test_chat_stream_equals_plain_and_the_engine(server, reference):
    url, _ = server
    expected = reference(MESSAGES, chat=True, max_new_tokens=32, mode="ar")
    plain = client(url).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=32, temperature=0)
    assert plain.choices[0].message.content == expected.text and plain.choices[0].message.role == "assistant"
    assert plain.usage.prompt_tokens == len(expected.prompt_ids)
    stream = client(url).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=32, temperature=0, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected.text
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason
    assert chunks[-1].model_extra["kangaroo"]["tokens_per_deep_pass"] >= 1


def test_stop_strings(server, reference):
    url, _ = server
    full = reference(PROMPT, max_new_tokens=40).text
    stop = full[10:13]
    assert stop and full.find(stop) >= 10 - 2
    cut = full[:full.find(stop)]
    plain = client(url).completions.create(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0, stop=[stop, "never"])
    assert plain.choices[0].text == cut and plain.choices[0].finish_reason == "stop"
    streamed = client(url).completions.create(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut


def test_seed_repeats_sampling(server, reference):
    url, _ = server
    expected = reference(PROMPT, max_new_tokens=24, temperature=0.9, top_p=0.95, seed=7).text
    ask = dict(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0.9, top_p=0.95)
    first = client(url).completions.create(seed=7, **ask).choices[0].text
    streamed = "".join(c.choices[0].text for c in client(url).completions.create(seed=7, stream=True, **ask))
    assert first == streamed == expected
    others = {client(url).completions.create(seed=s, **ask).choices[0].text for s in (1, 2, 3)}
    assert len(others | {first}) > 1  # the seed matters


# --- concurrency and backpressure ----------------------------------------------------------------------------------
def test_more_requests_than_engines_all_equal_serial_runs(server, reference):
    url, _ = server
    jobs = [(p, t, s) for p in (PROMPT, "hello world", "def add(a, b):") for t, s in ((0.0, None), (0.8, 5))]
    serial = [reference(p, max_new_tokens=48, temperature=t, seed=s).text for p, t, s in jobs]

    def ask(i: int) -> str:
        p, t, s = jobs[i]
        if i % 2:
            stream = client(url).completions.create(model=MODEL, prompt=p, max_tokens=48, temperature=t, seed=s, stream=True)
            return "".join(c.choices[0].text for c in stream)
        return client(url).completions.create(model=MODEL, prompt=p, max_tokens=48, temperature=t, seed=s).choices[0].text

    with ThreadPoolExecutor(len(jobs)) as threads:  # 6 at once on 2 engines: 4 wait in the queue
        assert list(threads.map(ask, range(len(jobs)))) == serial


@contextmanager
def held(app):
    """Every engine's deep pass waits while the gate is shut: a generation started before ``gate.clear()`` stays
    mid-generation until ``gate.set()``, however fast the engine (prompt lookup makes the tiny model very fast)."""
    gate = threading.Event()
    gate.set()
    patched = []
    for worker in app.state.pool.workers:
        deep = worker.engine.decoder.deep
        real = deep.run

        def run(*args, _real=real, **kwargs):
            assert gate.wait(DEADLINE), "the test never opened the gate"
            return _real(*args, **kwargs)

        deep.run = run
        patched.append(deep)
    try:
        yield gate
    finally:
        gate.set()
        for deep in patched:
            del deep.run  # the class's own method again


def long_stream(url: str):
    """A streaming completion of LONG tokens, started: its first chunk has arrived, so it holds an engine."""
    stream = client(url).completions.create(model=MODEL, prompt=LONG_PROMPT, max_tokens=LONG, temperature=0, stream=True)
    next(iter(stream))
    return stream


def test_full_queue_answers_429_and_disconnect_frees_the_engine(engine_dir, reference):
    assert reference(LONG_PROMPT, max_new_tokens=LONG).stop_reason == "max_new_tokens"  # it really runs long
    with serving(engine_dir, workers=1, max_queue=1) as (url, app), held(app) as gate:
        pool = app.state.pool
        running = long_stream(url)
        gate.clear()  # the long generation stays on its engine until its client goes away
        with ThreadPoolExecutor(1) as threads:
            queued = threads.submit(lambda: client(url).completions.create(model=MODEL, prompt="hello", max_tokens=4,
                                                                           temperature=0).choices[0].text)
            wait_for(lambda: pool.queued == 1, "the second request to wait in the queue")
            t = time.monotonic()
            with pytest.raises(openai.RateLimitError) as refused:
                client(url).completions.create(model=MODEL, prompt="hello", max_tokens=4)
            assert time.monotonic() - t < 5  # at once, not after the running request
            assert refused.value.status_code == 429 and refused.value.body["code"] == "queue_full"
            running.close()  # the client goes away mid-stream: its engine serves the queued request
            wait_for(lambda: metric(url, "kangaroo_errors_total", kind="client_disconnected") == 1, "the server to notice")
            gate.set()
            assert queued.result(timeout=DEADLINE) == reference("hello", max_new_tokens=4).text
        assert metric(url, "kangaroo_errors_total", kind="queue_full") == 1
        assert metric(url, "kangaroo_errors_total", kind="client_disconnected") == 1
        assert metric(url, "kangaroo_generated_tokens_total") == 4  # the long one was cancelled, never finished


def test_disconnect_frees_the_engine(engine_dir):
    with serving(engine_dir, workers=1, max_queue=0) as (url, app), held(app) as gate:  # no queue: busy means 429
        stream = long_stream(url)
        gate.clear()
        stream.close()
        wait_for(lambda: metric(url, "kangaroo_errors_total", kind="client_disconnected") == 1, "the server to notice")
        gate.set()
        wait_for(lambda: metric(url, "kangaroo_engines_busy") == 0, "the engine to come back")
        assert metric(url, "kangaroo_errors_total", kind="client_disconnected") == 1
        assert metric(url, "kangaroo_generated_tokens_total") == 0  # cancelled, not run to the end

        gate.clear()  # a plain (non-streamed) request whose client gives up while it runs
        with pytest.raises(httpx2.ReadTimeout):
            httpx2.post(f"{url}/v1/completions", json={"prompt": LONG_PROMPT, "max_tokens": LONG, "temperature": 0}, timeout=0.3)
        wait_for(lambda: metric(url, "kangaroo_errors_total", kind="client_disconnected") == 2, "the server to notice")
        gate.set()
        wait_for(lambda: app.state.pool.busy == 0, "the engine to come back")
        assert metric(url, "kangaroo_generated_tokens_total") == 0
        # greedy: the server's default is OpenAI's temperature 1, whose samples may end early on EOS
        assert client(url).completions.create(model=MODEL, prompt=PROMPT, max_tokens=3,
                                              temperature=0).usage.completion_tokens == 3


# --- bad requests ---------------------------------------------------------------------------------------------------
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
COMPLETION = {"prompt": PROMPT, "max_tokens": 4}


@pytest.mark.parametrize("path, body, status, param", [
    ("completions", b'{"prompt": "x", "max_tokens": ', 400, None),  # malformed JSON
    ("completions", b'["a", "list"]', 400, None),
    ("completions", {**COMPLETION, "max_tokens": "4"}, 400, "max_tokens"),
    ("completions", {**COMPLETION, "max_tokens": 0}, 400, "max_tokens"),
    ("completions", {**COMPLETION, "max_tokens": MAX_SEQ_LEN}, 400, "max_tokens"),  # past the cache
    ("completions", {**COMPLETION, "prompt": "the quick brown fox " * 400}, 400, "prompt"),  # over-long prompt
    ("completions", {**COMPLETION, "prompt": [10 ** 6]}, 400, None),  # not a token id
    ("completions", {**COMPLETION, "prompt": ["a", "b"]}, 400, "prompt"),
    ("completions", {**COMPLETION, "temperature": 2.5}, 400, "temperature"),
    ("completions", {**COMPLETION, "top_p": 0}, 400, "top_p"),
    ("completions", {**COMPLETION, "stop": ["a", "b", "c", "d", "e"]}, 400, None),
    ("completions", {**COMPLETION, "n": 2}, 400, "n"),
    ("completions", {**COMPLETION, "echo": True}, 400, "echo"),
    ("completions", {**COMPLETION, "model": "gpt-4o"}, 404, "model"),
    ("chat/completions", {**CHAT, "messages": []}, 400, "messages"),
    ("chat/completions", {**CHAT, "messages": [{"role": "tool", "content": "x"}]}, 400, None),
    ("chat/completions", {**CHAT, "messages": "hi"}, 400, "messages"),
    ("chat/completions", {**CHAT, "stream": "yes"}, 400, "stream"),
    ("chat/completions", {**CHAT, "logprobs": True}, 400, "logprobs"),
    ("chat/completions", {**CHAT, "messages": [{"role": "user", "content": []}]}, 400, "messages.0.content"),
    # known OpenAI fields this server cannot honour: refused, not silently ignored
    ("chat/completions", {**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
    ("chat/completions", {**CHAT, "tool_choice": "required"}, 400, "tool_choice"),
    ("chat/completions", {**CHAT, "response_format": {"type": "json_object"}}, 400, "response_format"),
    ("chat/completions", {**CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
     400, "response_format"),
    ("chat/completions", {**CHAT, "logit_bias": {"50256": -100}}, 400, "logit_bias"),
    ("chat/completions", {**CHAT, "top_logprobs": 2}, 400, "top_logprobs"),
    ("completions", {**COMPLETION, "logit_bias": {"1": 5}}, 400, "logit_bias"),
    # lone surrogates: valid JSON escapes that no UTF-8 text holds
    ("chat/completions", b'{"messages": [{"role": "user", "content": "hi \\ud800"}]}', 400, "messages.0.content"),
    ("chat/completions", b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}', 400,
     "messages.0.content"),
    ("chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "model": "\\ud800"}', 400, "model"),
    ("completions", b'{"prompt": "hi \\ud800", "max_tokens": 4}', 400, "prompt"),
    ("completions", b'{"prompt": ["hi \\ud800"], "max_tokens": 4}', 400, "prompt"),
    ("completions", b'{"prompt": "hi", "max_tokens": 4, "stop": ["\\ud800"]}', 400, "stop"),
])
def test_bad_requests_get_an_openai_error_and_the_server_keeps_serving(server, path, body, status, param):
    url, _ = server
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    response = httpx2.post(f"{url}/v1/{path}", timeout=30, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] and (param is None or error["param"].startswith(param))
    assert httpx2.post(f"{url}/v1/{path}", json=CHAT if path.startswith("chat") else COMPLETION, timeout=30).status_code == 200


def test_unknown_fields_are_ignored_and_errors_reach_the_client(server):
    url, _ = server
    response = httpx2.post(f"{url}/v1/completions", json={**COMPLETION, "temperature": 0, "frobnicate": 1, "user": "me"},
                           timeout=30)  # greedy: a sample at the default temperature 1 may end early on EOS
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 4
    with pytest.raises(openai.BadRequestError, match="context"):
        client(url).completions.create(model=MODEL, prompt=PROMPT, max_tokens=MAX_SEQ_LEN)
    assert metric(url, "kangaroo_requests_total", path="/v1/completions", status="400") >= 1


def test_neutral_forms_of_unsupported_fields_are_accepted(server):
    url, _ = server
    reply = client(url).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, temperature=0,
                                                tool_choice="none", response_format={"type": "text"}, logit_bias={})
    assert reply.usage.completion_tokens == 4


# --- the command line -----------------------------------------------------------------------------------------------
def test_cli_bad_engine_dir(tmp_path):
    result = CliRunner().invoke(serve_cli.main, ["--engine-dir", str(tmp_path / "nowhere"), "--port", "0"])
    assert result.exit_code == 2 and result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("cli, option, value", [("serve", "--shutdown-timeout", "nan"),
                                               ("serve", "--shutdown-timeout", "inf"), ("serve_load", "--time-limit", "nan")])
def test_cli_non_finite_seconds(tmp_path, cli, option, value):
    """Refused before anything loads (the engine directory does not even exist)."""
    from kangaroo_trt.cli import serve_load_cli

    main = {"serve": serve_cli, "serve_load": serve_load_cli}[cli].main
    result = CliRunner().invoke(main, ["--engine-dir", str(tmp_path / "nowhere"), option, value])
    assert result.exit_code == 2 and result.output.startswith(f"error: {option} must be a finite"), result.output


def _up(url: str) -> bool:
    try:
        return httpx2.get(f"{url}/health", timeout=1).status_code == 200
    except httpx2.TransportError:
        return False


def test_load_run_reports_both_modes_and_their_equality(engine_dir, tmp_path):
    """kangaroo-serve-load end to end on the tiny engine (a functional check: its timings are not asserted)."""
    from kangaroo_trt.cli import serve_load_cli

    out = tmp_path / "load"
    result = CliRunner().invoke(serve_load_cli.main, ["--engine-dir", str(engine_dir), "--requests", "3", "--concurrency", "2",
                                                      "--max-tokens", "8", "--workers", "1", "--threads", "1",
                                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert [(r["mode"], r["workers"], r["completed"], r["failed"]) for r in report["runs"]] == [("ar", 1, 3, 0),
                                                                                              ("kangaroo", 1, 3, 0)]
    assert report["equality"] == {"matched": 3, "compared": 3}
    assert report["runs"][1]["tokens_per_deep_pass"] >= 1 and report["runs"][0]["tokens_per_deep_pass"] is None
    assert "| kangaroo | 1 | 3/3 |" in (out / "report.md").read_text()
