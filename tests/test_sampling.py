"""Lossless speculative sampling (runner/verify.py): the rule's output distribution, the logits processing
against transformers' own warpers, and sampling through real engines (top-k 1 == greedy, seeds, CLI)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from kangaroo_trt.cli import run_cli
from kangaroo_trt.config import DecodeConfig
from kangaroo_trt.errors import ConfigError
from kangaroo_trt.runner.api import KangarooEngine
from kangaroo_trt.runner.arrays import to_host
from kangaroo_trt.runner.verify import Greedy, Sampling, rule_for

LOGITS = np.array([[2.0, 1.6, 0.5, 0.0, -1.0, -3.0],  # z_0: p_0 has mass spread over a few tokens
                   [0.0, 0.3, 2.2, 1.9, 0.0, -2.0],  # z_1
                   [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]], np.float32)  # z_2: uniform


def _sigma_bound(p: np.ndarray, n: int) -> np.ndarray:
    return 5 * np.sqrt(p * (1 - p) / n) + 1e-3


@pytest.fixture
def one_thread():
    """Tiny logits rows: torch's thread pool only adds wake-ups (milliseconds each on a busy machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("drafts", [[0, 2], [1, 3], [5, 0]])  # likely, second-likely, and near-impossible first drafts
def test_each_committed_token_follows_the_target_distribution(drafts, one_thread):
    """Over many rounds on fixed logits: the first committed token ~ p_0; given it equals d_1, the next ~ p_1;
    given d_1 d_2, the bonus ~ p_2. This is what plain sampling would give, so the rule is lossless."""
    rule, n = Sampling(temperature=0.8, seed=0), 12000
    p = [to_host(rule.distribution(z)) for z in LOGITS]
    first, second, third = np.zeros(6), np.zeros(6), np.zeros(6)
    for _ in range(n):
        accepted, target = rule.verify(drafts, [], LOGITS)
        tokens = drafts[:accepted] + [target]
        first[tokens[0]] += 1
        if tokens[0] == drafts[0]:
            second[tokens[1]] += 1
            if tokens[1] == drafts[1]:
                third[tokens[2]] += 1
    for counts, dist in ((first, p[0]), (second, p[1]), (third, p[2])):
        if counts.sum() < 500:
            continue  # too few rounds got this far to judge
        assert np.all(np.abs(counts / counts.sum() - dist) < _sigma_bound(dist, int(counts.sum()))), (counts, dist)
    # the acceptance rate is p_0(d_1)
    assert abs(first[drafts[0]] / n - p[0][drafts[0]]) < _sigma_bound(p[0][drafts[0]], n)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 3, 1.0), (1.3, 0, 0.8), (0.5, 4, 0.9)])
def test_distribution_matches_transformers_warpers(temperature, top_k, top_p):
    import torch
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    z = np.random.default_rng(1).normal(size=200).astype(np.float32) * 3
    scores = torch.from_numpy(z)[None].double()
    for warper in (TemperatureLogitsWarper(temperature), *([TopKLogitsWarper(top_k)] if top_k else []),
                   *([TopPLogitsWarper(top_p)] if top_p < 1 else [])):
        scores = warper(None, scores)
    expected = torch.softmax(scores, dim=-1)[0].numpy()
    got = to_host(Sampling(temperature, top_k, top_p).distribution(z))
    np.testing.assert_allclose(got, expected, atol=1e-9)
    assert np.count_nonzero(got) == np.count_nonzero(expected)


def test_a_rejected_draft_is_redrawn_among_the_tokens_left(one_thread):
    """top_k 2 leaves tokens 1 and 3; a draft of 1, when rejected, must be redrawn as 3 (never 1, never outside the
    top 2), and a draft outside the top 2 is always rejected."""
    rule = Sampling(1.0, top_k=2, seed=3)
    z = np.array([[0.0, 2.0, -1.0, 1.5, 0.5]], np.float32)
    outcomes = {rule.verify([1], [], np.repeat(z, 2, axis=0)) for _ in range(2000)}
    assert {(a, t) for a, t in outcomes if a == 0} == {(0, 3)} and {t for a, t in outcomes if a == 1} == {1, 3}
    assert {rule.verify([0], [], np.repeat(z, 2, axis=0))[0] for _ in range(200)} == {0}


def test_decode_config_chooses_the_rule_and_rejects_bad_values():
    assert isinstance(rule_for(DecodeConfig()), Greedy)
    assert isinstance(rule_for(DecodeConfig(temperature=0.7)), Sampling)
    for bad in ({"temperature": -1.0}, {"top_k": -2}, {"top_p": 0.0}, {"top_p": 1.5}):
        with pytest.raises(ConfigError):
            DecodeConfig(**bad)


@pytest.fixture(scope="module")
def engine(tiny_engine):
    return KangarooEngine.open(tiny_engine("llama-gqa-tied", max_seq_len=128)[0], threads=1)


def test_top_k_1_sampling_is_greedy_in_both_modes(engine):
    greedy = engine.generate("the quick brown fox", config=engine.decode_config(mode="ar", max_new_tokens=20)).output_ids
    for mode in ("ar", "kangaroo"):
        sampled = engine.generate("the quick brown fox", config=engine.decode_config(mode=mode, max_new_tokens=20, temperature=1.3, top_k=1, seed=5))
        assert sampled.output_ids == greedy, mode


def test_seeded_sampling_repeats_and_seeds_differ(engine):
    for mode in ("ar", "kangaroo"):
        run = lambda seed: engine.generate("def add(a, b):", config=engine.decode_config(mode=mode,   # noqa: E731
            max_new_tokens=16, temperature=1.0, seed=seed, gamma=3, tau=0.0))
        a, b, c = run(11), run(11), run(12)
        assert a.output_ids == b.output_ids and a.output_ids != c.output_ids, mode
        assert a.stats.to_dict()["sampling"] == {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 11}


def test_kangaroo_and_ar_sample_the_same_first_token(oracle_engine):
    """End to end on a real engine whose drafts are the target's argmax (so the draft is accepted or resampled
    in most rounds): the first sampled token's distribution, Kangaroo vs plain sampling, 1000 seeds each."""
    n, counts, prompt = 1000, {}, [5, 17, 42, 9]
    for mode in ("ar", "kangaroo"):
        seen: dict[int, int] = {}
        for seed in range(n):
            config = oracle_engine.decode_config(max_new_tokens=2, temperature=0.8, top_k=4, seed=seed, gamma=3, tau=0.0)
            first = oracle_engine.generate(prompt_ids=prompt, config=replace(config, mode=mode)).output_ids[0]
            seen[first] = seen.get(first, 0) + 1
        counts[mode] = seen
    keys = set(counts["ar"]) | set(counts["kangaroo"])
    tv = 0.5 * sum(abs(counts["ar"].get(k, 0) - counts["kangaroo"].get(k, 0)) for k in keys) / n
    top = max(counts["ar"].values()) / n
    assert len(keys) > 1 and 0.2 < top < 0.9, counts  # a spread distribution, so a wrong rule would show
    assert tv < 0.1, counts


def test_cli_samples_and_refuses_bad_values(tiny_engine):
    out = tiny_engine("llama-gqa-tied", max_seq_len=128)[0]
    result = CliRunner().invoke(run_cli.main, ["--engine-dir", str(out), "--prompt", "hello", "--max-new-tokens", "5",
                                               "--temperature", "0.9", "--top-p", "0.9", "--seed", "2", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)["stats"]
    assert stats["sampling"]["seed"] == 2 and stats["new_tokens"] == 5
    bad = CliRunner().invoke(run_cli.main, ["--engine-dir", str(out), "--prompt", "hello", "--top-p", "0"])
    assert bad.exit_code == 2 and "top_p must lie in (0, 1]" in bad.output
