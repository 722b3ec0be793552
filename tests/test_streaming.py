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
    with engine.stream(PROMPT, max_new_tokens=30) as stream:
        pieces = iter(stream)  # a loop in progress
        next(pieces)
        with pytest.raises(InputError, match="already serving"):
            engine.generate(PROMPT, max_new_tokens=2)
    assert engine.generate(PROMPT, max_new_tokens=2).output_ids  # closed: free again


def test_async_stream_yields_the_same_text(engine):
    expected = engine.generate(PROMPT, max_new_tokens=24)

    async def collect():
        stream = engine.astream(PROMPT, max_new_tokens=24)
        pieces = [piece async for piece in stream]
        return pieces, stream.result

    pieces, result = asyncio.run(collect())
    assert "".join(pieces) == result.text == expected.text and result.output_ids == expected.output_ids
    assert len(pieces) > 1


def test_async_stream_stops_early_and_reports_errors(engine):
    async def first_piece_then_stop():
        async with engine.astream(PROMPT, max_new_tokens=60) as stream:
            return await stream.__anext__()

    assert asyncio.run(first_piece_then_stop())
    assert engine.generate(PROMPT, max_new_tokens=2).output_ids  # aclose waited for the worker: the engine is free

    async def while_busy():
        with engine.stream(PROMPT, max_new_tokens=30) as held:
            pieces = iter(held)
            next(pieces)
            return [piece async for piece in engine.astream(PROMPT, max_new_tokens=4)]

    with pytest.raises(InputError, match="already serving"):
        asyncio.run(while_busy())
