"""Adapter training on tiny random models: data errors, loss falls, determinism, resume, CLI, card."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from kangaroo_trt.errors import ConfigError
from kangaroo_trt.train.cache import FeatureSettings, build_features
from kangaroo_trt.train.data import BenchmarkFilter, DataError, read_examples
from kangaroo_trt.train import trainer as trainer_module
from kangaroo_trt.train.trainer import TrainConfig, train

TEXTS = ["the quick brown fox jumps over the lazy dog " * 3, "kangaroo decoding drafts with shallow layers " * 3,
         "hello world, this is a tiny tokenizer for tests 0123456789 " * 2, "def add(a, b):\n    return a + b\n" * 3]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Training here is many tiny ops: one thread avoids oversubscription on shared CI cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


@pytest.fixture(scope="module")
def chat_model(tiny_model) -> Path:
    """The tiny GQA model with a chat template, so prompts can be self-distilled."""
    return tiny_model("llama-gqa-tied", chat=True)


@pytest.fixture(scope="module")
def features(chat_model, tmp_path_factory):
    """Self-distilled features of 24 prompts at exit layers 1 and 2 (built once)."""
    records = [{"conversations": [{"from": "human", "value": f"{TEXTS[i % 4][:20 + i]} {i}"},
                                  {"from": "gpt", "value": "ignored: self-distilled"}]} for i in range(24)]
    data = write_jsonl(tmp_path_factory.mktemp("data") / "chat.jsonl", records)
    settings = FeatureSettings(max_examples=24, max_new_tokens=12, top_k=8, batch_size=8)
    cache = build_features(chat_model, read_examples(data), settings, (1, 2),
                           tmp_path_factory.mktemp("features"), log=lambda _: None)
    return cache


FAST = dict(exit_layer=2, epochs=3, lr=1e-2, warmup_steps=2, sequences_per_step=4, heldout_fraction=0.25)


# --- data -----------------------------------------------------------------------------------------------
def test_malformed_jsonl_names_the_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "fine"}, "{not json", {"prompt": "fine too"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON"):
        read_examples(path)
    assert len(read_examples(path, skip_bad=True, warn=lambda _: None)) == 2


@pytest.mark.parametrize("record, message", [
    ({"foo": 1}, "no 'conversations', 'messages', 'prompt' or 'text' field"),
    ({"prompt": ""}, "'prompt' must be a non-empty string"),
    ({"conversations": [{"from": "robot", "value": "x"}]}, "turn 0 has unknown role 'robot'"),
    ({"messages": [{"role": "user"}]}, "turn 0 must be an object"),
    ([1, 2], "expected a JSON object"),
])
def test_malformed_records_say_what_is_wrong(tmp_path, record, message):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "ok"}, record])
    with pytest.raises(DataError, match=r"d\.jsonl:2: " + message.replace("(", r"\(").replace(")", r"\)")):
        read_examples(path)


def test_truncated_sharegpt_dump_and_benchmark_filter(tmp_path):
    conv = lambda q, a: {"id": q[:3], "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}  # noqa: E731
    full = json.dumps([conv("Why is the sky blue today, friend?", "Rayleigh."), conv("Name three primes, please.", "2, 3, 5")], indent=1)
    path = tmp_path / "dump.json"
    path.write_text(full[: full.rindex("2, 3")])  # cut inside the second record
    examples = read_examples(path)
    assert [e.user_turns for e in examples] == [["Why is the sky blue today, friend?"]]
    assert examples[0].response == "Rayleigh."
    questions = write_jsonl(tmp_path / "q.jsonl", [{"question_id": 1, "category": "qa", "turns": ["why is the SKY blue today,  friend?"]}])
    with pytest.raises(DataError, match="no usable records"):
        read_examples(path, exclude=BenchmarkFilter.from_files([questions]), warn=lambda _: None)


# --- teacher features --------------------------------------------------------------------------------------
def test_features_match_the_export_graphs(chat_model, features):
    """Cached h_l equals the shallow graph's output, and the teacher's top-1 is the next (greedy) token."""
    from kangaroo_trt.model.weights import build_modules

    modules = build_modules(chat_model, None, 2)
    seq = features.load(2)[0]
    ids = seq.input_ids.long()[None]
    spec = modules.model_spec
    empty = [torch.zeros(1, spec.num_kv_heads, ids.shape[1], spec.head_dim)] * 4  # a slot per position
    hidden = modules.shallow(ids, torch.arange(ids.shape[1])[None], *empty)[0][0, :-1]
    assert torch.allclose(hidden, seq.hidden[2].float(), atol=2e-2, rtol=1e-2)
    assert torch.equal(seq.topk_ids[:, 0].long(), ids[0, seq.prompt_len:])



def test_an_exit_layer_added_to_a_cache_equals_a_fresh_build(chat_model, tmp_path):
    """A complete cache asked for another exit layer gets only that layer's states (a shallow pass), and they
    equal, bit for bit, a build that held both layers from the start; the teacher's targets are kept."""
    records = [{"conversations": [{"from": "human", "value": f"{TEXTS[i % 4][:15 + i]} {i}"},
                                  {"from": "gpt", "value": TEXTS[(i + 1) % 4][:30 + 2 * i]}]} for i in range(10)]
    examples = read_examples(write_jsonl(tmp_path / "chat.jsonl", records))
    settings = FeatureSettings(self_distill=False, max_examples=10, max_new_tokens=16, top_k=8, batch_size=4)
    quiet = dict(log=lambda _: None)
    grown = build_features(chat_model, examples, settings, (1,), tmp_path / "grown", **quiet)
    targets = grown.load(1)
    grown = build_features(chat_model, examples, settings, (2, 3), tmp_path / "grown", **quiet)
    assert grown.meta["exit_layers"] == [1, 2, 3] and "exit_layer_seconds" in grown.meta
    fresh = build_features(chat_model, examples, settings, (1, 2, 3), tmp_path / "fresh", **quiet)
    for layer in (1, 2, 3):
        for a, b in zip(grown.load(layer), fresh.load(layer), strict=True):
            assert torch.equal(a.hidden[layer], b.hidden[layer]) and torch.equal(a.input_ids, b.input_ids)
    for a, b in zip(targets, grown.load(3), strict=True):
        assert torch.equal(a.topk_ids, b.topk_ids) and torch.equal(a.topk_probs, b.topk_probs)
        assert not torch.equal(a.hidden[1], b.hidden[3])  # a different layer, not a copy

def test_a_larger_build_starts_from_a_smaller_ones_shards(chat_model, tmp_path):
    """Scored responses: a cache of more examples takes a complete smaller cache's full shards (same target, data
    and settings) and scores only the rest; what it holds equals a build from nothing."""
    records = [{"conversations": [{"from": "human", "value": f"{TEXTS[i % 4][:12 + i]} {i}"},
                                  {"from": "gpt", "value": TEXTS[(i + 2) % 4][:25 + i]}]} for i in range(14)]
    examples = read_examples(write_jsonl(tmp_path / "chat.jsonl", records))
    small = FeatureSettings(self_distill=False, max_examples=6, max_new_tokens=16, top_k=8, batch_size=4)
    large = FeatureSettings(self_distill=False, max_examples=12, max_new_tokens=16, top_k=8, batch_size=4)
    logs = []
    smaller = build_features(chat_model, examples, small, (2,), tmp_path / "caches" / "small", log=logs.append)
    grown = build_features(chat_model, examples, large, (2,), tmp_path / "caches" / "large", log=logs.append)
    assert "the first 4 examples come from" in logs[-1]  # one full shard of 4; the partial one is scored again
    assert (grown.directory / "shard-00000.pt").read_bytes() == (smaller.directory / "shard-00000.pt").read_bytes()
    fresh = build_features(chat_model, examples, large, (2,), tmp_path / "alone" / "large", log=logs.append)
    assert not any("come from" in line for line in logs[3:])
    assert grown.meta["examples"] == fresh.meta["examples"] == 12
    for a, b in zip(grown.load(2), fresh.load(2), strict=True):
        assert a.index == b.index and torch.equal(a.input_ids, b.input_ids) and torch.equal(a.hidden[2], b.hidden[2])
        assert torch.equal(a.topk_ids, b.topk_ids) and torch.equal(a.topk_probs, b.topk_probs)
    other = build_features(chat_model, examples, dataclasses.replace(large, top_k=4), (2,), tmp_path / "caches" / "k4",
                           log=logs.append)
    assert "come from" not in logs[-1] and other.meta["examples"] == 12  # other settings: nothing reused


# --- training ----------------------------------------------------------------------------------------------
def test_loss_falls_and_metrics_rise(chat_model, features, tmp_path):
    config = TrainConfig(**{**FAST, "epochs": 8})
    sequences = features.load(2)
    result = train(chat_model, sequences, config, tmp_path, log=lambda _: None)
    train_set, heldout = trainer_module.split(sequences, config.heldout_fraction)
    before = trainer_module.evaluate(_fresh(chat_model, 2), train_set)
    after = trainer_module.evaluate(result.modules, train_set)
    assert after["loss"] < before["loss"] - 0.3, (before, after)
    assert after["acceptance"] > before["acceptance"] and after["top1"] > before["top1"]
    assert result.history[-1]["heldout"]["loss"] < trainer_module.evaluate(_fresh(chat_model, 2), heldout)["loss"]
    assert len(result.history) == 8 and result.steps == 8 * 5


def _fresh(model_dir, exit_layer):
    from kangaroo_trt.model.weights import build_modules

    modules = build_modules(model_dir, None, exit_layer)
    trainer_module.init_adapter(modules, "copy", 0)
    return modules


def _adapter_state(result):
    return {k: v.clone() for k, v in result.modules.adapter.state_dict().items()}


def test_same_seed_same_adapter_and_resume_matches(chat_model, features, tmp_path, monkeypatch):
    config = TrainConfig(**{**FAST, "epochs": 2, "checkpoint_every": 1})
    a = _adapter_state(train(chat_model, features.load(2), config, tmp_path / "a", log=lambda _: None))
    b = _adapter_state(train(chat_model, features.load(2), config, tmp_path / "b", log=lambda _: None))
    assert all(torch.equal(a[k], b[k]) for k in a)

    real_step, calls = trainer_module._step, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(chat_model, features.load(2), config, tmp_path / "c", log=lambda _: None)
    monkeypatch.setattr(trainer_module, "_step", real_step)
    other = TrainConfig(**{**FAST, "epochs": 2, "checkpoint_every": 1, "seed": 1})
    with pytest.raises(ConfigError, match="other settings"):
        train(chat_model, features.load(2), other, tmp_path / "c", log=lambda _: None)
    logs = []
    c = _adapter_state(train(chat_model, features.load(2), config, tmp_path / "c", log=logs.append))
    assert any("resuming" in line and "at step 3" in line for line in logs)
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_cli_writes_a_loadable_adapter_with_card(chat_model, tmp_path):
    from kangaroo_trt.cli.train_cli import main
    from kangaroo_trt.model.weights import build_modules, load_adapter

    data = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in TEXTS * 3])
    out = tmp_path / "adapter"
    args = ["--model", str(chat_model), "--data", str(data), "--out", str(out), "--exit-layer", "1", "--epochs", "1",
            "--max-new-tokens", "16", "--top-k", "4", "--sequences-per-step", "2", "--heldout-fraction", "0.2",
            "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    checkpoint = load_adapter(out)
    assert checkpoint.exit_layer == 1 and checkpoint.meta["training"]["steps"] == 5
    build_modules(chat_model, checkpoint, 1)  # every key and shape fits the model
    card = (out / "TRAINING_CARD.md").read_text()
    assert "exit layer 1" in card and "top-1 agreement" in card
    assert not (out / trainer_module.STATE_FILE).exists()

    restricted = tmp_path / "restricted"
    result = CliRunner().invoke(main, args[:5] + [str(restricted)] + args[6:] + ["--draft-vocab", "8", "--gamma", "3",
                                                                                "--tau", "0.5"])
    assert result.exit_code == 0, result.output
    small = load_adapter(restricted)
    assert small.spec.draft_vocab_size == 8 and small.meta["draft_vocab"]["coverage"] > 0
    assert small.meta["decode"] == {"gamma": 3, "tau": 0.5}  # what kangaroo-export build will default to
    assert "gamma 3, tau 0.5" in (restricted / "TRAINING_CARD.md").read_text()
    alone = CliRunner().invoke(main, args[:5] + [str(tmp_path / "y")] + args[6:] + ["--gamma", "3"])
    assert alone.exit_code == 2 and "--gamma and --tau together" in alone.output
    assert build_modules(chat_model, small, 1).adapter.lm_head.weight.shape[0] == 8

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, {"prompt": 3}])
    result = CliRunner().invoke(main, args[:2] + ["--data", str(bad), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "bad.jsonl:2: 'prompt' must be a non-empty string" in result.output


def test_tune_sweeps_on_onnx_runtime_and_writes_defaults(chat_model, tmp_path, monkeypatch):
    """Two candidate exit layers and a 2 x 2 gamma/tau grid on real ORT engines; outputs must equal AR."""
    from kangaroo_trt.cli.tune_cli import main
    from kangaroo_trt.model.weights import load_adapter

    monkeypatch.setenv("KANGAROO_TRT_CACHE", str(tmp_path / "cache"))
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"{TEXTS[i % 4][:12 + i]} {i}"} for i in range(20)])
    out = tmp_path / "adapter"
    result = CliRunner().invoke(main, [
        "--model", str(chat_model), "--data", str(data), "--adapter", str(out), "--exit-layers", "1,2",
        "--gammas", "2,3", "--taus", "0.2,0.6", "--prompts", "2", "--max-new-tokens", "12", "--max-examples", "20",
        "--epochs", "1", "--heldout-fraction", "0.2", "--device", "cpu", "--workdir", str(tmp_path / "work")])
    assert result.exit_code == 0, result.output
    checkpoint = load_adapter(out)
    tuning = checkpoint.meta["tuning"]
    assert [r["exit_layer"] for r in tuning["exit_layer_rows"]] == [1, 2]
    assert checkpoint.exit_layer in (1, 2) and len(tuning["rows"]) == 4
    best = max(tuning["rows"], key=lambda r: r["speedup"])
    assert checkpoint.meta["decode"] == {"gamma": best["gamma"], "tau": best["tau"]}
    assert tuning["mismatched_outputs"] == 0
    assert all(r["mean_accepted"] >= 1.0 and r["ar_tok_s"] > 0 for r in tuning["rows"])
    assert "| exit layer | gamma | tau |" in (out / "TRAINING_CARD.md").read_text()


@pytest.mark.parametrize("name", ["qwen2-bias-gqa", "qwen3-qknorm"])
def test_copy_init_mirrors_bias_and_qk_norm(tiny_model, name):
    """The adapter starts as target layer exit_layer's attention, q/k/v biases and q/k norms included."""
    modules = _fresh(tiny_model(name), 2)
    source = modules.deep.layers["2"].self_attn.state_dict()
    own = modules.adapter.layers["0"].self_attn.state_dict()
    assert any(k.endswith(("bias", "_norm.weight")) for k in own)
    for key, value in own.items():
        assert torch.equal(value, source[key]), key


def test_mlp_variant_trains_copies_and_round_trips(chat_model, features, tmp_path):
    """--adapter-mlp: the adapter starts as target layer exit_layer's whole block, learns, and is saved with its
    MLP in the adapter's config and weights."""
    from kangaroo_trt.model.weights import build_modules, load_adapter, save_adapter

    fresh = build_modules(chat_model, _mlp_adapter(chat_model), 2)
    trainer_module.init_adapter(fresh, "copy", 0)
    own, source = fresh.adapter.layers["0"], fresh.deep.layers["2"]
    for key, value in own.mlp.state_dict().items():
        assert torch.equal(value, source.mlp.state_dict()[key]), key
    assert torch.equal(own.post_attention_layernorm.weight, source.post_attention_layernorm.weight)

    config = TrainConfig(**{**FAST, "epochs": 6, "adapter_mlp": True})
    sequences = features.load(2)
    result = train(chat_model, sequences, config, tmp_path / "run", log=lambda _: None)
    train_set, _ = trainer_module.split(sequences, config.heldout_fraction)
    assert trainer_module.evaluate(result.modules, train_set)["loss"] < trainer_module.evaluate(fresh, train_set)["loss"] - 0.3
    save_adapter(result.modules, tmp_path / "saved")
    loaded = load_adapter(tmp_path / "saved")
    assert loaded.spec.mlp_size == 128 and "layers.0.mlp.down_proj.weight" in loaded.tensors
    rebuilt = build_modules(chat_model, loaded, 2)
    assert torch.equal(rebuilt.adapter.layers["0"].mlp.up_proj.weight, result.modules.adapter.layers["0"].mlp.up_proj.weight)


def _mlp_adapter(model_dir):
    from kangaroo_trt.config import AdapterSpec, ModelSpec
    from kangaroo_trt.model.weights import load_hf_config, random_adapter

    return random_adapter(AdapterSpec.like(ModelSpec.from_hf_config(load_hf_config(model_dir)), mlp=True))


def test_restricted_head_trains_on_the_rows_inference_drafts_from(chat_model, features, tmp_path):
    """draft_vocab: training's head is the kept rows of the target's head; its top-1 metric is what greedy
    Kangaroo accepts with that head (argmax over the kept rows, mapped back to a token id, equal to the
    teacher's top-1), computed here independently from the full head's logits."""
    from kangaroo_trt.train.objective import draft_logits

    config = TrainConfig(**{**FAST, "epochs": 2, "draft_vocab": 10})
    sequences = features.load(2)
    result = train(chat_model, sequences, config, tmp_path, log=lambda _: None)
    adapter = result.modules.adapter
    vocab = adapter.draft_vocab
    assert adapter.lm_head.weight.shape[0] == 10 and result.draft_vocab["size"] == 10
    _, heldout = trainer_module.split(sequences, config.heldout_fraction)
    full_head = _fresh(chat_model, 2).deep.lm_head.weight
    assert torch.equal(adapter.lm_head.weight, full_head[vocab])
    hits = tokens = 0
    for f in heldout:
        logits = draft_logits(adapter, f.hidden[2].float(), f.prompt_len - 1)
        hits += int((vocab[logits.argmax(-1)] == f.topk_ids[:, 0].long()).sum())
        tokens += f.response_len
    metrics = trainer_module.evaluate(result.modules, heldout)
    assert metrics["tokens"] == tokens and metrics["top1"] == pytest.approx(hits / tokens)
    assert result.history[-1]["heldout"]["top1"] == pytest.approx(hits / tokens)


def test_training_goes_on_from_a_saved_adapter(chat_model, features, tmp_path):
    """init_from: training starts from the saved adapter's weights (not a fresh copy-init), keeps its MLP and draft
    head, records where it came from, and refuses settings the adapter cannot take."""
    from kangaroo_trt.model.weights import load_adapter, save_adapter

    sequences = features.load(2)
    parent = train(chat_model, sequences, TrainConfig(**{**FAST, "epochs": 2, "draft_vocab": 10, "adapter_mlp": True}),
                   tmp_path / "parent-run", log=lambda _: None)
    save_adapter(parent.modules, tmp_path / "parent", {"draft_vocab": parent.draft_vocab,
                                                       "training": {"history": parent.history}})
    still = train(chat_model, sequences, TrainConfig(**{**FAST, "epochs": 1, "lr": 1e-12,
                                                        "init_from": str(tmp_path / "parent")}),
                  tmp_path / "still", log=lambda _: None)
    assert still.heldout["loss"] == pytest.approx(parent.heldout["loss"], abs=1e-5)  # the parent's weights, not copy-init
    assert still.init_from == {"path": str(tmp_path / "parent"), "heldout": parent.heldout}
    assert still.draft_vocab == parent.draft_vocab
    assert torch.equal(still.modules.adapter.draft_vocab, parent.modules.adapter.draft_vocab)
    assert still.modules.adapter.layers["0"].mlp is not None

    further = train(chat_model, sequences, TrainConfig(**{**FAST, "epochs": 8, "init_from": str(tmp_path / "parent")}),
                    tmp_path / "further", log=lambda _: None)
    train_set, _ = trainer_module.split(sequences, FAST["heldout_fraction"])
    assert (trainer_module.evaluate(further.modules, train_set)["loss"]
            < trainer_module.evaluate(parent.modules, train_set)["loss"] - 0.02)
    assert load_adapter(tmp_path / "parent").spec.mlp_size  # the parent's files are only read

    with pytest.raises(ConfigError, match="exit layer 2, not 1: pass --exit-layer 2"):
        train(chat_model, features.load(1), TrainConfig(**{**FAST, "exit_layer": 1, "init_from": str(tmp_path / "parent")}),
              tmp_path / "bad", log=lambda _: None)
    with pytest.raises(ConfigError, match="drafts from 10 tokens, not 20"):
        train(chat_model, sequences, TrainConfig(**{**FAST, "draft_vocab": 20, "init_from": str(tmp_path / "parent")}),
              tmp_path / "bad2", log=lambda _: None)
