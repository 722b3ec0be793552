"""Device-resident rounds (issue 18): on the PyTorch backends a greedy round reads back from the device at most once,
and never the full-vocabulary logits; the rounds stay lossless.

Every way a torch tensor's contents reach the host is counted while the decoder's rounds run, with the size of
what was read (``runner/readbacks.py``).
"""

from __future__ import annotations

import time

import pytest
import torch

from kangaroo_trt.runner.api import KangarooEngine
from kangaroo_trt.runner.costs import CostTable
from kangaroo_trt.runner.exactness import CHECK_PROMPTS
from kangaroo_trt.runner.readbacks import count_reads, reads_per_round

def cheap_rows() -> CostTable:
    """What a GPU measures: a deep pass barely grows with its rows, a draft step is cheap (the cost policy then
    drafts), confirmed just now (so that the engine does not measure this machine instead)."""
    return CostTable(tuple(2.0 + 0.01 * r for r in range(8)), tuple(0.2 + 0.01 * r for r in range(8)), 0.05,
                     checked=time.time())


@pytest.fixture(scope="module")
def engine_dir(tiny_engine):  # the engine of test_exactness.py
    return tiny_engine("llama-gqa-tied", max_seq_len=64, prefill_chunk=8, precisions=("fp32", "fp16", "int8"),
                       tensorrt="off")[0]


def _reads(engine, mode: str):
    prompt_ids = engine.encode(CHECK_PROMPTS[0], chat=False)
    return reads_per_round(engine.decoder, prompt_ids, engine.decode_config(max_new_tokens=20, mode=mode))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_greedy_round_on_torch_reads_back_once_and_never_the_logits(engine_dir, precision):
    with KangarooEngine.open(engine_dir, backend="torch-cpu", precision=precision, threads=1) as engine:
        assert engine.decoder.resident
        engine.decoder.costs = cheap_rows()  # rows as cheap as on a GPU: the cost policy drafts every round
        vocab = engine.manifest.model.vocab_size
        ar, kangaroo = _reads(engine, "ar"), _reads(engine, "kangaroo")
        assert sum(d >= 2 for d in kangaroo["drafts"]) >= 3  # chains of drafts, not plain steps
        assert kangaroo["tokens"] == ar["tokens"]
        for run in (ar, kangaroo):
            assert run["reads"] <= run["rounds"], run
            assert run["largest_read"] < vocab, f"full-vocabulary logits crossed to the host: {run}"


def test_a_round_that_reads_each_draft_reads_it_once(engine_dir):
    """The tau policy decides after every draft, so it reads each one: the draft and its confidence cross together
    (one read per draft, and the round's targets once)."""
    with KangarooEngine.open(engine_dir, backend="torch-cpu", threads=1) as engine:
        prompt_ids = engine.encode(CHECK_PROMPTS[0], chat=False)
        config = engine.decode_config(max_new_tokens=20, mode="kangaroo", policy="tau", tau=0.0, gamma=4)
        run = reads_per_round(engine.decoder, prompt_ids, config)
        ar = reads_per_round(engine.decoder, prompt_ids, engine.decode_config(max_new_tokens=20, mode="ar"))
        assert run["tokens"] == ar["tokens"] and max(run["drafts"]) >= 2
        # a round reads its drafts (those verified, and one dropped at most) and then its targets
        assert run["reads"] <= sum(run["drafts"]) + 2 * run["rounds"], run
        assert run["largest_read"] < engine.manifest.model.vocab_size


def test_every_draft_accepted_on_device_rounds(oracle_engine):
    """The oracle model accepts every draft: rounds whose last draft's exit state the adapter never read (its
    catch-up in the next round) are lossless and still read back once."""
    with KangarooEngine.open(oracle_engine.directory, backend="torch-cpu", threads=1) as engine:
        engine.decoder.costs = cheap_rows()
        ar, kangaroo = _reads(engine, "ar"), _reads(engine, "kangaroo")
        assert kangaroo["tokens"] == ar["tokens"]
        assert max(kangaroo["drafts"]) > 1 and kangaroo["rounds"] * 2 <= len(kangaroo["tokens"])  # accepted chains
        assert kangaroo["reads"] <= kangaroo["rounds"]


def test_sampling_on_torch_draws_on_the_device(engine_dir):
    """Speculative sampling on torch-cpu: the rule's coins and draws come back in one more small read per round."""
    with KangarooEngine.open(engine_dir, backend="torch-cpu", threads=1) as engine:
        engine.decoder.costs = cheap_rows()
        prompt_ids = engine.encode(CHECK_PROMPTS[0], chat=False)
        run = reads_per_round(engine.decoder, prompt_ids, engine.decode_config(max_new_tokens=20, temperature=0.9, seed=1))
        assert max(run["drafts"]) >= 2 and len(run["tokens"]) == 20
        assert run["reads"] <= 2 * run["rounds"] and run["largest_read"] < engine.manifest.model.vocab_size, run


def test_the_counter_sees_every_kind_of_read():
    x = torch.arange(6)
    with count_reads() as sizes:
        x.numpy(), x[0].item(), x.tolist(), int(x[1]), float(x[2]), bool(x[3]), [10, 20][x[1]]
    assert sizes == [6, 1, 6, 1, 1, 1, 1]
    x.numpy()
    assert len(sizes) == 7 and "numpy" not in torch.Tensor.__dict__  # restored


def test_device_rounds_on_host_arrays_equal_host_rounds(engine_dir):
    """The device round's logic on ONNX Runtime CPU (numpy: the same code with host arrays) gives AR's tokens, and the
    per-draft rule still reads each draft where it runs."""
    with KangarooEngine.open(engine_dir, backend="onnxruntime-cpu", threads=1) as engine:
        engine.decoder.costs = cheap_rows()
        prompt_ids = engine.encode(CHECK_PROMPTS[1], chat=False)
        config = engine.decode_config(max_new_tokens=24)
        ar = engine.generate(prompt_ids=prompt_ids, config=engine.decode_config(max_new_tokens=24, mode="ar")).output_ids
        engine.decoder.resident = True
        resident = engine.generate(prompt_ids=prompt_ids, config=config)
        assert resident.output_ids == ar and resident.stats.acceptance.rounds < len(ar)
        tau = engine.generate(prompt_ids=prompt_ids, config=engine.decode_config(max_new_tokens=24, tau=0.5))
        assert tau.output_ids == ar
