"""Streams: closing one early frees the engine; the asyncio stream yields what the plain one does."""

from __future__ import annotations

import asyncio

import pytest

from kangaroo_trt.errors import InputError
from kangaroo_trt.runner.api import KangarooEngine

PROMPT = "the quick brown fox"


@pytest.fixture(scope="module")
def engine(tiny_engine):
    return KangarooEngine.open(tiny_engine("llama-gqa-tied", max_seq_len=128)[0], threads=1)


def test_a_stream_holds_the_engine_until_closed(engine):
    with engine.stream(PROMPT, config=engine.decode_config(max_new_tokens=30)) as stream:
        pieces = iter(stream)  # a loop in progress
        next(pieces)
        with pytest.raises(InputError, match="already serving"):
            engine.generate(PROMPT, config=engine.decode_config(max_new_tokens=2))
    assert engine.generate(PROMPT, config=engine.decode_config(max_new_tokens=2)).output_ids  # closed: free again


def test_async_stream_yields_the_same_text(engine):
    expected = engine.generate(PROMPT, config=engine.decode_config(max_new_tokens=24))

    async def collect():
        stream = engine.astream(PROMPT, config=engine.decode_config(max_new_tokens=24))
        pieces = [piece async for piece in stream]
        return pieces, stream.result

    pieces, result = asyncio.run(collect())
    assert "".join(pieces) == result.text == expected.text and result.output_ids == expected.output_ids
    assert len(pieces) > 1


def test_async_stream_stops_early_and_reports_errors(engine):
    async def first_piece_then_stop():
        async with engine.astream(PROMPT, config=engine.decode_config(max_new_tokens=60)) as stream:
            return await stream.__anext__()

    assert asyncio.run(first_piece_then_stop())
    assert engine.generate(PROMPT, config=engine.decode_config(max_new_tokens=2)).output_ids  # aclose waited for the worker: the engine is free

    async def while_busy():
        with engine.stream(PROMPT, config=engine.decode_config(max_new_tokens=30)) as held:
            pieces = iter(held)
            next(pieces)
            return [piece async for piece in engine.astream(PROMPT, config=engine.decode_config(max_new_tokens=4))]

    with pytest.raises(InputError, match="already serving"):
        asyncio.run(while_busy())


def test_close_frees_the_caches_and_refuses_later_requests(tiny_engine):
    directory = tiny_engine("llama-gqa-tied", max_seq_len=128)[0]
    with KangarooEngine.open(directory, threads=1) as engine:
        runner = engine.backend.graph("deep")
        expected = engine.generate(PROMPT, config=engine.decode_config(max_new_tokens=6)).output_ids
        with engine.stream(PROMPT, config=engine.decode_config(max_new_tokens=30)) as stream:
            pieces = iter(stream)  # a loop in progress
            next(pieces)
            with pytest.raises(InputError, match="close its stream"):
                engine.close()
    assert engine.backend is None and runner.caches == {} and runner._session is None  # freed on leaving `with`
    engine.close()  # idempotent
    with pytest.raises(InputError, match="engine is closed"):
        engine.generate(PROMPT)
    with KangarooEngine.open(directory, threads=1) as engine:
        pending = engine.stream(PROMPT)  # created, not started: it holds nothing yet
    with pytest.raises(InputError, match="engine is closed"):
        list(pending)
    with KangarooEngine.open(directory, threads=1) as again:  # a fresh open serves the same tokens
        assert again.generate(PROMPT, config=again.decode_config(max_new_tokens=6)).output_ids == expected
