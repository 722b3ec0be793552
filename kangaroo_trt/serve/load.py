"""A bounded load run against kangaroo-serve on loopback: Kangaroo vs AR, for each pool size.

For each (workers, mode) a server starts in this process on a free loopback port; the official ``openai`` client
sends a fixed number of streamed chat requests (Spec-Bench first turns, greedy), at most ``concurrency`` at a
time, within a time limit (requests still running then are cancelled and reported as unfinished). Measured per
run: requests/s, p50/p99 latency and time to first token, output tokens/s, tokens per deep pass; and whether each
Kangaroo text equals AR's (greedy decoding: it must). The client shares this process and its cores with the server.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any, Callable

import numpy as np

from ..errors import ConfigError, InputError
from ..markdown import markdown_table
from .app import Settings, create_app
from .pool import EnginePool, open_workers
from .server import BackgroundServer


@dataclass(frozen=True)
class LoadConfig:
    requests: int = 16
    concurrency: int = 4
    max_tokens: int = 64
    time_limit: float = 600.0  # seconds per run
    chat: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.time_limit, (int, float)) and math.isfinite(self.time_limit) and self.time_limit >= 1):
            raise ConfigError(f"--time-limit must be a finite number of seconds >= 1, got {self.time_limit}")


@dataclass
class Reply:
    text: str = ""
    latency: float = 0.0
    ttft: float | None = None
    tokens: int = 0
    tokens_per_deep_pass: float | None = None


@dataclass
class LoadRun:
    mode: str
    workers: int
    engine: str  # backend, precision, device
    wall_s: float
    replies: list[Reply | None] = field(default_factory=list)  # None: failed, or unfinished within the time limit
    errors: list[str] = field(default_factory=list)  # why requests failed (not counting the unfinished)

    def summary(self) -> dict[str, Any]:
        done = [r for r in self.replies if r is not None]
        latency = [r.latency for r in done]
        ttft = [r.ttft for r in done if r.ttft is not None]
        passes = [r.tokens_per_deep_pass for r in done if r.tokens_per_deep_pass]
        pct = lambda xs, q: float(np.percentile(xs, q)) if xs else None  # noqa: E731
        return {"mode": self.mode, "workers": self.workers, "requests": len(self.replies), "completed": len(done),
                "failed": len(self.errors), "first_error": self.errors[0] if self.errors else None,
                "wall_s": self.wall_s, "requests_per_s": len(done) / self.wall_s if self.wall_s else None,
                "latency_p50_s": pct(latency, 50), "latency_p99_s": pct(latency, 99),
                "ttft_p50_s": pct(ttft, 50), "ttft_p99_s": pct(ttft, 99),
                "output_tokens_per_s": sum(r.tokens for r in done) / self.wall_s if self.wall_s else None,
                "tokens_per_deep_pass": float(np.mean(passes)) if passes else None}


async def _one(client, model: str, prompt: str, config: LoadConfig) -> Reply:
    reply, start = Reply(), perf_counter()
    ask = dict(model=model, max_tokens=config.max_tokens, temperature=0, stream=True,
               stream_options={"include_usage": True})
    if config.chat:
        stream = await client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **ask)
    else:
        stream = await client.completions.create(prompt=prompt, **ask)
    pieces = []
    async for chunk in stream:
        if chunk.choices:
            piece = chunk.choices[0].delta.content if config.chat else chunk.choices[0].text
            if piece and reply.ttft is None:
                reply.ttft = perf_counter() - start
            pieces.append(piece or "")
            extension = (chunk.model_extra or {}).get("kangaroo")
            if extension and extension["mode"] == "kangaroo":
                reply.tokens_per_deep_pass = extension["tokens_per_deep_pass"]
        if chunk.usage:
            reply.tokens = chunk.usage.completion_tokens
    reply.text, reply.latency = "".join(pieces), perf_counter() - start
    return reply


async def _drive(url: str, model: str, prompts: list[str], config: LoadConfig) -> tuple[list[Reply | None], list[str], float]:
    import openai

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=config.time_limit)
    gate = asyncio.Semaphore(config.concurrency)

    async def limited(prompt: str) -> Reply:
        async with gate:
            return await _one(client, model, prompt, config)

    tasks = [asyncio.ensure_future(limited(p)) for p in prompts]
    start = perf_counter()
    await asyncio.wait(tasks, timeout=config.time_limit)
    wall = perf_counter() - start
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await client.close()
    ok = [t.done() and not t.cancelled() and t.exception() is None for t in tasks]
    errors = [str(t.exception()) for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
    return [t.result() if good else None for t, good in zip(tasks, ok)], errors, wall


def run_load(engine_dir: Path, prompts: list[str], workers: list[int], modes: list[str], config: LoadConfig,
             backend: str = "auto", threads: int | None = None, progress: Callable[[str], None] = print) -> list[LoadRun]:
    if config.concurrency < 1 or config.requests < 1:
        raise InputError("--requests and --concurrency must be at least 1")
    prompts = [prompts[i % len(prompts)] for i in range(config.requests)]
    runs = []
    for count in workers:
        for mode in modes:
            pool = EnginePool(open_workers(engine_dir, count, backend=backend, threads=threads), max_queue=config.requests)
            description = pool.workers[0].description
            with BackgroundServer(create_app(pool, Settings("load", mode=mode))) as url:
                replies, errors, wall = asyncio.run(_drive(url, "load", prompts, config))
            runs.append(LoadRun(mode, count, description, wall, replies, errors))
            s = runs[-1].summary()
            progress(f"{mode:9s} workers {count}: {s['completed']}/{s['requests']} requests in {wall:.1f} s, "
                     f"{s['requests_per_s']:.2f} req/s" + (f"; {len(errors)} failed: {errors[0]}" if errors else ""))
    return runs


def equality(runs: list[LoadRun]) -> dict[str, int]:
    """Greedy Kangaroo texts vs AR's with the same pool size, request by request (both finished)."""
    matched = compared = 0
    for run in runs:
        if run.mode != "kangaroo":
            continue
        for ar in (r for r in runs if r.mode == "ar" and r.workers == run.workers):
            for a, b in zip(run.replies, ar.replies):
                if a is not None and b is not None:
                    compared += 1
                    matched += a.text == b.text
    return {"matched": matched, "compared": compared}


def report(runs: list[LoadRun], config: LoadConfig, engine_name: str, environment: dict[str, Any]) -> dict[str, Any]:
    summaries = [r.summary() for r in runs]
    for s in summaries:
        base = next((b for b in summaries if b["mode"] == "ar" and b["workers"] == s["workers"]), None)
        s["requests_per_s_vs_ar"] = (s["requests_per_s"] / base["requests_per_s"]
                                     if base and base["requests_per_s"] and s["requests_per_s"] else None)
    engine = {"name": engine_name, "description": runs[0].engine if runs else "n/a"}
    return {"settings": asdict(config), "engine": engine, "environment": environment, "runs": summaries,
            "equality": equality(runs)}


def markdown(rep: dict[str, Any]) -> str:
    def num(v, fmt="{:.2f}"):
        return "n/a" if v is None else fmt.format(v)

    st, eq = rep["settings"], rep["equality"]
    lines = [f"# kangaroo-serve load run: {rep['engine']['name']}", "",
             f"{st['requests']} streamed {'chat ' if st['chat'] else ''}requests (Spec-Bench first turns, greedy, "
             f"max_tokens {st['max_tokens']}), at most {st['concurrency']} at a time, time limit {st['time_limit']:g} s "
             f"per run; client and server on loopback in one process ({rep['environment']['cpu_count']} cores, "
             f"{rep['environment']['cpu']}). Engine: {rep['engine']['description']}.", ""]
    header = ["mode", "workers", "completed", "req/s", "vs AR", "latency p50 / p99 (s)", "TTFT p50 / p99 (s)",
              "output tok/s", "tokens per deep pass"]
    lines += markdown_table(header, [[s["mode"], str(s["workers"]), f"{s['completed']}/{s['requests']}",
                                      num(s["requests_per_s"]), num(s["requests_per_s_vs_ar"], "{:.2f}x"),
                                      f"{num(s['latency_p50_s'])} / {num(s['latency_p99_s'])}",
                                      f"{num(s['ttft_p50_s'], '{:.3f}')} / {num(s['ttft_p99_s'], '{:.3f}')}",
                                      num(s["output_tokens_per_s"], "{:.1f}"), num(s["tokens_per_deep_pass"])]
                                     for s in rep["runs"]])
    lines += ["", f"Kangaroo text identical to AR's: {eq['matched']}/{eq['compared']} requests."]
    lines += [f"{s['mode']} workers {s['workers']}: {s['failed']} failed, first: {s['first_error']}" for s in rep["runs"]
              if s["failed"]]
    lines.append("")
    return "\n".join(lines)
