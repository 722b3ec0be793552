"""The cost-aware drafting policy (runner/policy.py), its measured costs (runner/costs.py) and calibration
(runner/calibrate.py): lossless like any drafting choice, no drafts where they cannot pay, deeper drafts where rows
are cheap, and a request whose drafts fail decays to plain steps."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import numpy as np
import pytest

from conftest import TINY_CONFIGS
from lossless import NearTies, assert_adapter_cache_in_step
from kangaroo_trt.config import DecodeConfig
from kangaroo_trt.contract.manifest import Manifest
from kangaroo_trt.errors import ConfigError
from kangaroo_trt.runner import costs
from kangaroo_trt.runner.api import KangarooEngine
from kangaroo_trt.runner.calibrate import calibrate
from kangaroo_trt.runner.costs import CostTable
from kangaroo_trt.runner.policy import PROBE_EVERY, Calibration, DraftPolicy

ROWS = 8


def table(deep_first: float, per_row: float, adapter: float, shallow: float = 1.0) -> CostTable:
    return CostTable(tuple(deep_first + per_row * r for r in range(ROWS)), (shallow,) * ROWS, adapter)


CPU_LIKE = table(25.0, 2.0, 1.5)  # the measured shape on 2 CPU cores: an extra row costs ~2 ms of a 25 ms pass
EXPENSIVE = table(10.0, 40.0, 30.0)  # a draft costs more than a plain step: drafting cannot pay
CHEAP_ROWS = table(25.0, 0.0, 0.3, shallow=0.3)  # a GPU's shape: extra rows almost free


def _run(engine: KangarooEngine, prompt: list[int], config: DecodeConfig, policy: DraftPolicy | None = None):
    """Kangaroo's tokens, the number of drafts each round verified, and the generation's last state."""
    generation = engine.decoder.generate(prompt, config, policy=policy)
    drafted = [len(step.drafts) for step, _ in generation if step.tokens]
    return generation.transcript.tokens, drafted, generation.state


def _prompts(engine: KangarooEngine) -> list[list[int]]:
    """Random prompts, and one that repeats its own continuation (so that lookup drafts too)."""
    rng = np.random.default_rng(11)
    prompts = [rng.integers(2, engine.manifest.model.vocab_size, size=n).tolist() for n in (3, 9, 20)]
    head = prompts[1]
    tail = engine.generate(prompt_ids=head, config=engine.decode_config(mode="ar", max_new_tokens=10)).output_ids
    return prompts + [head + tail + head[:3]]


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_cost_policy_equals_ar(tiny_engine, name):
    engine = KangarooEngine.open(tiny_engine(name, max_seq_len=128, prefill_chunk=8)[0], threads=1)
    config = engine.decode_config(max_new_tokens=30)
    assert config.policy == "cost"  # the default
    ties, drafted = NearTies(), []
    for prompt in _prompts(engine):
        ar = engine.generate(prompt_ids=prompt, config=replace(config, mode="ar"), record_margins=True)
        for cost in (CPU_LIKE, CHEAP_ROWS, EXPENSIVE, None):  # None: the table measured on this engine
            engine.decoder.costs = cost
            tokens, per_round, state = _run(engine, prompt, config)
            ties.check(ar, type("R", (), {"output_ids": tokens})(), f"{name} costs={cost} prompt={len(prompt)}")
            assert_adapter_cache_in_step(engine.decoder, state, prompt + tokens, at_least=len(prompt))
            drafted += per_round
    assert 0 in drafted and max(drafted) > 1, drafted


def test_oracle_drafts_deeper_where_rows_are_cheap_and_not_at_all_where_they_cannot_pay(oracle_engine):
    """Every oracle draft is right; with a calibration that says so, cheap rows draft up to gamma, expensive ones never."""
    prompt = [5, 17, 42, 9, 33, 8]
    sure = Calibration(first=(0.95,) * 10, later=(0.95,) * 10, mean_later=0.95)
    config = oracle_engine.decode_config(max_new_tokens=40, gamma=6, lookup_ngram=0, policy="cost")
    ar = oracle_engine.generate(prompt_ids=prompt, config=replace(config, mode="ar"))
    per_table = {}
    for name, cost in (("cheap", CHEAP_ROWS), ("cpu", CPU_LIKE), ("expensive", EXPENSIVE)):
        tokens, drafted, _ = _run(oracle_engine, prompt, config, DraftPolicy(cost, sure))
        assert tokens == ar.output_ids, name
        per_table[name] = drafted
    assert max(per_table["cheap"]) == max(per_table["cpu"]) == 6, per_table  # drafts that land pay on a CPU too
    assert set(per_table["expensive"]) == {0}, per_table


def _drafts_in_a_round(policy: DraftPolicy, confidence: float, room: int) -> int:
    assert policy.start_adapter()
    drafts = 0
    while (choice := policy.after_draft(confidence, room)) == "more":
        drafts += 1
    return drafts + (choice == "keep")


def test_rows_that_cost_less_are_drafted_deeper():
    even = Calibration(first=(0.6,) * 10, later=(0.6,) * 10, mean_later=0.6)
    depth = {name: _drafts_in_a_round(DraftPolicy(cost, even), 0.6, room=7)
             for name, cost in (("cheap", CHEAP_ROWS), ("cpu", CPU_LIKE), ("expensive", EXPENSIVE))}
    # On the CPU a draft costs about 4.5 ms (adapter, shallow row, deep row) of a 26 ms step: worth 0.17 tokens, so
    # drafts pay while all of them land with a chance above that: 0.6 ** 3 = 0.22 does, 0.6 ** 4 = 0.13 does not.
    assert depth == {"cheap": 7, "cpu": 3, "expensive": 0}, depth


def test_policy_decisions_follow_the_costs():
    sure = Calibration(first=(0.9,) * 10, later=(0.9,) * 10, mean_later=0.9)
    cheap, cpu, expensive = (DraftPolicy(c, sure) for c in (CHEAP_ROWS, CPU_LIKE, EXPENSIVE))
    for policy in (cheap, cpu, expensive):
        assert policy.start_adapter()  # a request starts by trying the adapter
    assert cheap.after_draft(0.95, room=6) == "more"
    assert expensive.after_draft(0.95, room=6) == "drop"
    # An unlikely first draft is dropped on the CPU (a wider deep pass costs more than it is worth) ...
    doubtful = Calibration()  # identity map: a 0.05 confidence is a 0.05 chance
    assert DraftPolicy(CPU_LIKE, doubtful).after_draft(0.05, room=5) == "drop"
    # ... and prompt lookup copies as many tokens as pay: all of them where rows are free, none where they cost a lot.
    assert DraftPolicy(CHEAP_ROWS, doubtful).lookup_count(ngram=4, available=5) == 5
    assert DraftPolicy(EXPENSIVE, doubtful).lookup_count(ngram=4, available=5) == 0


def test_a_request_whose_drafts_fail_decays_to_plain_steps_and_one_whose_drafts_land_keeps_drafting():
    confident = Calibration(first=(0.8,) * 10, later=(0.8,) * 10, mean_later=0.8)
    failing, landing = DraftPolicy(CPU_LIKE, confident), DraftPolicy(CPU_LIKE, confident)
    kinds = []
    for _ in range(40):
        if failing.start_adapter():
            drafts = 0
            while (choice := failing.after_draft(0.9, room=5)) == "more":
                drafts += 1
            drafts += choice == "keep"
            failing.observe(drafts, 0, 1)  # every draft rejected
            kinds.append(drafts)
        else:
            failing.observe(0, 0, 1)
            kinds.append("plain")
    assert failing.adapter_outcomes.factor < 0.3
    tail = kinds[20:]
    assert tail.count("plain") >= len(tail) - len(tail) // PROBE_EVERY - 1, kinds  # plain steps, a probe now and then
    for _ in range(40):
        drafts = _drafts_in_a_round(landing, 0.9, room=5)
        landing.observe(drafts, drafts, drafts + 1)  # every draft accepted
    assert drafts == 5 and landing.adapter_outcomes.factor > 1.0


def test_the_correction_learns_the_true_ratio_of_acceptance_to_the_calibration():
    """Drafts land at a fixed share of what the calibration says. Where rows are free the policy verifies every
    first draft, so each one is judged; the correction factor must settle at that share. Learnt against the
    corrected chances (what the rounds were valued with), it settled near the square root instead (0.69 for a
    share of 0.5): a request whose drafts land half as often as the calibration says was valued as if they landed
    more often."""
    import random

    even = Calibration(first=(0.6,) * 10, later=(0.6,) * 10, mean_later=0.6)
    for share in (0.5, 1.5):
        rng, factors = random.Random(0), []
        for _ in range(100):
            policy = DraftPolicy(CHEAP_ROWS, even)
            for _ in range(60):
                assert policy.start_adapter()
                assert policy.after_draft(0.6, room=1) == "keep"
                accepted = int(rng.random() < 0.6 * share)
                policy.observe(1, accepted, accepted + 1)
            factors.append(policy.adapter_outcomes.factor)
        assert abs(np.mean(factors) - share) < 0.08 * share, (share, np.mean(factors))


def test_a_request_whose_confident_drafts_are_rare_but_right_keeps_drafting_for_them():
    """One position in 8 has a confident draft (0.95, right), the others a hopeless one (0.05, wrong). A round that
    finds a hopeless first draft drops it and pays only the adapter row (1.5 ms of a 27.5 ms step); one that finds a
    confident one commits two tokens for about 4 ms more. Drafting pays on average, although most rounds that run the
    adapter gain nothing: the policy must keep running it (a running average of rounds' gains drifted below zero
    after a few hopeless rounds in a row and then verified about a third of the confident drafts)."""
    policy, p, accepted_total = DraftPolicy(CPU_LIKE, Calibration()), 0, 0

    def confidence(i: int) -> float:
        return 0.95 if i % 8 == 0 else 0.05

    while p < 400:
        if not policy.start_adapter():
            policy.observe(0, 0, 1)
            p += 1
            continue
        drafts = 0
        while (choice := policy.after_draft(confidence(p + drafts), room=5)) == "more":
            drafts += 1
        drafts += choice == "keep"
        accepted = 0
        while accepted < drafts and confidence(p + accepted) > 0.5:
            accepted += 1
        policy.observe(drafts, accepted, accepted + 1)
        accepted_total += accepted
        p += accepted + 1
    assert accepted_total >= 0.9 * 400 / 8, accepted_total


def test_a_request_whose_confident_drafts_are_all_wrong_decays_to_plain_steps(tiny_engine):
    """Through the decoder: the real adapter runs, but its drafts are replaced by tokens that AR never commits there,
    at a confidence of 0.99; the policy must learn within the request that they do not pay."""
    engine = KangarooEngine.open(tiny_engine("llama-gqa-tied", max_seq_len=160, prefill_chunk=8)[0], threads=1)
    prompt = np.random.default_rng(2).integers(2, engine.manifest.model.vocab_size, size=6).tolist()
    config = engine.decode_config(max_new_tokens=120, lookup_ngram=0)
    full = prompt + engine.generate(prompt_ids=prompt, config=replace(config, mode="ar")).output_ids
    original, vocab = engine.decoder._adapter, engine.manifest.model.vocab_size

    def wrong(hidden, start):
        draft, _ = original(hidden, start)
        at = start + hidden.shape[1]  # the position the draft is for
        wrong_id = np.array([[(full[at] + 1) % vocab]]) if at < len(full) else draft
        return wrong_id, np.array([[0.99]], np.float32)  # as the decoder's graph call returns them: [1, 1] arrays

    engine.decoder._adapter = wrong
    try:
        tokens, drafted, _ = _run(engine, prompt, config, DraftPolicy(CPU_LIKE, Calibration()))
    finally:
        del engine.decoder._adapter
    assert tokens == full[len(prompt):]
    assert drafted[0] > 0 and sum(d > 0 for d in drafted[-40:]) <= 40 // PROBE_EVERY + 1, str(drafted)


def test_costs_are_measured_through_the_decoder_and_cached_outside_the_engine_directory(tiny_engine, tmp_path, monkeypatch):
    directory = tiny_engine("llama-gqa-tied", max_seq_len=128, prefill_chunk=8)[0]  # built first: its check caches a table
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    before = sorted(p.name for p in directory.rglob("*"))
    engine = KangarooEngine.open(directory, threads=1)
    calls = []
    original = engine.decoder._deep
    engine.decoder._deep = lambda hidden, start: calls.append(hidden.shape[1]) or original(hidden, start)
    measured = engine.cost_table()
    del engine.decoder._deep
    assert sorted(set(calls)) == list(range(1, engine.manifest.max_verify + 1))  # every row count, through _deep
    assert measured.rows == engine.manifest.max_verify and all(x > 0 for x in measured.deep + measured.shallow)
    assert list(measured.deep) == sorted(measured.deep)
    cached = list((tmp_path / "cache" / "kangaroo-trt" / "costs").glob("*.json"))
    assert len(cached) == 1 and costs.load(cached[0]) == measured
    assert sorted(p.name for p in directory.rglob("*")) == before  # nothing written into the engine directory
    Manifest.read(directory).verify_files(directory)
    again = KangarooEngine.open(directory, threads=1)
    again.decoder._deep = lambda *a: pytest.fail("a table measured just now is neither checked nor measured again")
    assert again.cost_table() == measured
    assert any("deep pass by rows" in line for line in measured.lines())


def test_a_table_measured_under_load_is_measured_again(tiny_engine, tmp_path, monkeypatch):
    """A table measured while other work slowed every call (here: 10x too slow) would be used for good; once it is
    RECHECK_S old (in the cache, or in use by a long-running engine), a quick plain step sees the machine beat it and
    the table is measured again. One that reads faster than the machine now runs (measured quiet, checked under load)
    is kept, and one measured recently is not checked at all."""
    directory = tiny_engine("llama-gqa-tied", max_seq_len=128, prefill_chunk=8)[0]  # built first: its check caches a table
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    measured = KangarooEngine.open(directory, threads=1).cost_table()
    [path] = (tmp_path / "cache" / "kangaroo-trt" / "costs").glob("*.json")

    def scaled(factor: float, age_s: float) -> CostTable:
        return CostTable(tuple(x * factor for x in measured.deep), tuple(x * factor for x in measured.shallow),
                         measured.adapter * factor, measured.backend, measured.precision, time.time() - age_s)

    old = costs.RECHECK_S + 60
    loaded = scaled(10.0, old)
    costs.save(loaded, path)
    fresh = KangarooEngine.open(directory, threads=1).cost_table()
    assert fresh.plain_ms < loaded.plain_ms / 3 and costs.load(path) == fresh  # measured again, and cached
    quiet = scaled(0.1, old)
    costs.save(quiet, path)
    engine = KangarooEngine.open(directory, threads=1)
    kept = engine.cost_table()
    assert kept == quiet and not costs.due(kept)  # confirmed now: not checked again for RECHECK_S
    engine.decoder.costs = recent = scaled(10.0, 1.0)
    assert engine.cost_table() is recent  # measured a second ago: used as it is
    engine.decoder.costs = scaled(10.0, old)  # a long-running engine whose table was measured under load
    assert engine.cost_table().plain_ms < loaded.plain_ms / 3


def test_calibration_from_real_drafts_is_stored_and_read_back(oracle_engine):
    prompts = [[5, 17, 42, 9, 33, 8], [7, 7, 3, 9, 7, 7, 3]]
    fitted = calibrate(oracle_engine, prompts, max_new_tokens=24)
    assert fitted.samples > 0 and fitted.first[-1] > 0.8  # the oracle's drafts are all right
    assert list(fitted.first) == sorted(fitted.first) and list(fitted.later) == sorted(fitted.later)
    assert Calibration.from_dict(json.loads(json.dumps(fitted.to_dict()))) == fitted


def test_policy_options():
    with pytest.raises(ConfigError, match="policy must be one of"):
        DecodeConfig(policy="greedy")
    with pytest.raises(ConfigError, match="belong to the tau policy"):
        DecodeConfig(policy="cost", draft_floor=0.3)
    with pytest.raises(ConfigError, match="belong to the tau policy"):
        DecodeConfig(policy="cost", adaptive_gamma=False)


def test_tau_floor_and_fixed_gamma_keep_their_meaning(oracle_engine):
    """An explicit tau, draft floor or fixed gamma selects the tau policy; a plain request gets the cost policy."""
    assert oracle_engine.decode_config().policy == "cost"
    assert oracle_engine.decode_config(policy=None).policy == "cost"
    assert oracle_engine.decode_config(tau=0.5).policy == "tau"
    assert oracle_engine.decode_config(draft_floor=0.2).policy == "tau"
    assert oracle_engine.decode_config(adaptive_gamma=False).policy == "tau"
    assert oracle_engine.decode_config(tau=0.5, policy="cost").policy == "cost"
