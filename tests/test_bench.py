"""kangaroo-bench: question selection, the equality check, speedup and acceptance arithmetic on real results of a
tiny engine, the full run and report, and the command line (exit codes, Ctrl-C, one-line errors)."""

import dataclasses
import json

import pytest
from click.testing import CliRunner

from kangaroo_trt.bench import BenchConfig, build_report, load_questions, run_bench, select, write_report
from kangaroo_trt.runner.equality import MATCH, MISMATCH, NEAR_TIE, compare_outputs, first_difference
from kangaroo_trt.bench.metrics import pooled_acceptance, question_speed, speedup
from kangaroo_trt.bench.questions import SPEC_BENCH_TASKS, default_questions_path, tasks_in
from kangaroo_trt.bench.runner import BenchRunner
from kangaroo_trt.cli import bench_cli
from kangaroo_trt.errors import InputError
from kangaroo_trt.runner.api import KangarooEngine

PROMPT = "the quick brown fox jumps over the lazy dog"
QUESTIONS = [
    {"question_id": 1, "category": "qa", "turns": ["hello world, this is a tiny tokenizer"]},
    {"question_id": 2, "category": "writing", "turns": ["kangaroo decoding drafts with shallow layers",
                                                        "def add(a, b): return a + b"]},
    {"question_id": 3, "category": "qa", "turns": ["the lazy dog"]},
    {"question_id": 4, "category": "summarization", "turns": [" ".join(["the quick brown fox"] * 60)]},  # > 128 tokens
]


@pytest.fixture(scope="module")
def engine_dir(tiny_engine):
    return tiny_engine("llama-gqa-tied", max_seq_len=128)[0]


@pytest.fixture(scope="module")
def engine(engine_dir):
    return KangarooEngine.open(engine_dir, threads=1)


@pytest.fixture
def questions_file(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text("\n".join(json.dumps(q) for q in QUESTIONS) + "\n")
    return path


def _pair(engine, prompt=PROMPT, max_new_tokens=12):
    return tuple(engine.generate(prompt, record_margins=True, config=engine.decode_config(mode=m, gamma=3, tau=0.0, max_new_tokens=max_new_tokens))
                 for m in ("kangaroo", "ar"))


def _with_stats(result, **changes):
    return dataclasses.replace(result, stats=dataclasses.replace(result.stats, **changes))


# --- questions -------------------------------------------------------------------------------------------------

def test_spec_bench_ships_with_license_and_six_tasks():
    questions = load_questions()
    assert len(questions) == 480
    assert tasks_in(questions) == list(SPEC_BENCH_TASKS)
    assert all(sum(q.task == t for q in questions) == 80 for t in SPEC_BENCH_TASKS)
    assert all(len(q.turns) == 2 for q in questions if q.task == "mt_bench")
    folder = default_questions_path().parent
    assert "Apache License" in (folder / "LICENSE").read_text()
    assert "hemingkx/Spec-Bench" in (folder / "SOURCE.md").read_text()

    quick = select(questions, limit=2)
    assert [q.task for q in quick] == [t for t in SPEC_BENCH_TASKS for _ in range(2)]
    assert [q.question_id for q in select(questions, ["qa", "rag"], 1)] == \
           [next(q.question_id for q in questions if q.task == t) for t in ("qa", "rag")]


@pytest.mark.parametrize("lines, message", [
    (['{"question_id": 1, "category": "qa", "turns": ["a"]}', "{not json"], ":2 is not valid JSON"),
    (['{"question_id": 1, "category": "qa"}'], "lacks turns"),
    (['{"question_id": 1, "category": "qa", "turns": []}'], "non-empty list"),
    ([""], "holds no questions"),
])
def test_bad_question_files(tmp_path, lines, message):
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(lines))
    with pytest.raises(InputError, match=message):
        load_questions(path)


def test_bad_selection(questions_file):
    questions = load_questions(questions_file)
    with pytest.raises(InputError, match="unknown category nope: choose from mt_bench, summarization, qa"):
        select(questions, ["nope"])
    with pytest.raises(InputError, match="at least 1"):
        select(questions, limit=0)
    with pytest.raises(InputError, match="does not exist"):
        load_questions(questions_file.parent / "missing.jsonl")


# --- equality, speedup, acceptance on real results -------------------------------------------------------------

def test_equality_check_on_real_results(engine):
    kangaroo, ar = _pair(engine)
    assert len(ar.output_ids) >= 4 and len(ar.margins) == len(ar.output_ids)
    assert compare_outputs(kangaroo, ar).status == MATCH

    tokens = list(kangaroo.output_ids)
    tokens[3] = (tokens[3] + 1) % len(engine.tokenizer)
    diverged = dataclasses.replace(kangaroo, output_ids=tokens)
    verdict = compare_outputs(diverged, ar)
    assert (verdict.position, verdict.margin, verdict.kangaroo_token, verdict.ar_token) == \
           (3, ar.margins[3], tokens[3], ar.output_ids[3])
    assert verdict.status == (MISMATCH if ar.margins[3] >= 1e-4 else NEAR_TIE)

    near_tie = dataclasses.replace(ar, margins=ar.margins[:3] + [5e-5] + ar.margins[4:])
    assert compare_outputs(diverged, near_tie).status == NEAR_TIE
    assert not compare_outputs(diverged, dataclasses.replace(ar, margins=None)).ok  # unknown margin: a failure

    short = dataclasses.replace(kangaroo, output_ids=kangaroo.output_ids[:2])
    assert compare_outputs(short, ar).position == 2 and compare_outputs(short, ar).kangaroo_token is None
    assert first_difference([1, 2], [1, 2]) is None


def test_speedup_is_a_ratio_of_mean_speeds(engine):
    kangaroo, ar = _pair(engine, max_new_tokens=8)
    n = kangaroo.stats.new_tokens
    k = [_with_stats(kangaroo, total_s=n / 20), _with_stats(kangaroo, total_s=n / 10)]  # 20 and 10 tok/s
    a = [_with_stats(ar, total_s=n / 10), _with_stats(ar, total_s=n / 20)]  # 10 and 20 tok/s
    assert question_speed(k[:1]) == pytest.approx(20)
    assert question_speed(k) == pytest.approx(2 * n / (n / 20 + n / 10))  # turns pool tokens and time
    speeds_k, speeds_a = [question_speed([r]) for r in k], [question_speed([r]) for r in a]
    assert speedup(speeds_k, speeds_a) == pytest.approx(1.0)  # a mean of ratios would say 1.25
    with pytest.raises(ValueError):
        speedup(speeds_k, speeds_a[:1])


def test_pooled_acceptance_counts_every_round(engine):
    results = [_pair(engine, p)[0] for p in (PROMPT, "hello world")]
    log = pooled_acceptance(results)
    assert log.rounds == sum(r.stats.acceptance.rounds for r in results)
    assert log.mean_accepted == pytest.approx(sum(r.stats.new_tokens for r in results) / log.rounds)
    assert sum(log.histogram(3)) == log.rounds and len(log.ctar(3)) == 3


# --- the whole run and its report ------------------------------------------------------------------------------

def test_run_bench_and_report(engine, questions_file, tmp_path, monkeypatch):
    order = []
    real = KangarooEngine.generate
    monkeypatch.setattr(KangarooEngine, "generate", lambda self, *a, **kw: order.append(kw["config"].mode) or real(self, *a, **kw))

    questions = select(load_questions(questions_file))
    bench = run_bench(engine, questions, BenchConfig(engine.decode_config(max_new_tokens=8, gamma=3, tau=0.0)))
    assert not bench.interrupted and len(bench.runs) == 4
    assert order[:2] == ["kangaroo", "ar"]  # warm-up
    assert [order[i] for i in range(2, len(order), 2)] == ["kangaroo", "ar", "kangaroo", "ar"]  # alternating starts

    two_turns = next(r for r in bench.runs if r.question.question_id == 2)
    first, second = two_turns.turns
    second_prompt = engine.tokenizer.decode(second.results["ar"].prompt_ids)
    assert first.results["ar"].text in second_prompt  # asked after the model's own first answer
    assert second_prompt.endswith("def add(a, b): return a + b")
    skipped = next(r for r in bench.runs if r.question.question_id == 4)
    assert skipped.skipped and "--max-seq-len" in skipped.skipped and not skipped.turns

    report = build_report(bench, engine, "kangaroo-bench --test")
    assert list(report["by_task"]) == ["mt_bench", "qa"]
    assert report["equality"] == {"turns": 4, "matched": 4, "sampled": 0, "near_ties": [], "mismatches": [], "passed": True}
    o = report["overall"]
    records = [q for q in report["questions"] if "turns" in q]
    assert o["questions"] == 3 and o["turns"] == 4 and len(o["ctar"]) == 3
    assert o["speedup"] == pytest.approx(sum(q["tokens_per_s"]["kangaroo"] for q in records)
                                         / sum(q["tokens_per_s"]["ar"] for q in records))
    assert report["progress"]["skipped"][0]["question_id"] == 4

    paths = write_report(report, tmp_path / "report")
    assert json.loads(paths["json"].read_text())["overall"]["speedup"] == pytest.approx(o["speedup"])
    markdown = paths["markdown"].read_text()
    assert "equality PASSED: 4/4 turns" in markdown and "| overall | 3 |" in markdown
    for key in ("speedup", "ctar", "accepted_histogram", "accepted_by_position", "time_split"):
        assert paths[key].read_bytes()[:4] == b"\x89PNG" and f"]({paths[key].name})" in markdown


def test_transformers_baseline(engine, questions_file):
    from kangaroo_trt.bench.hf_baseline import TransformersBaseline

    baseline = TransformersBaseline.for_engine(engine, threads=1)
    bench = run_bench(engine, select(load_questions(questions_file), ["qa"], 1), BenchConfig(engine.decode_config(max_new_tokens=6)), baseline)
    hf = bench.runs[0].turns[0].results["hf"]
    assert 0 < hf.stats.new_tokens <= 6 and hf.prompt_ids == bench.runs[0].turns[0].results["ar"].prompt_ids
    report = build_report(bench, engine)
    assert report["overall"]["hf_tokens_per_s"] > 0 and report["overall"]["speedup_vs_hf"] > 0
    assert report["overall"]["hf_matches_ar_turns"] in (0, 1)


# --- command line ----------------------------------------------------------------------------------------------

def _bench(engine_dir, questions_file, out, *args):
    return CliRunner().invoke(bench_cli.main, ["--engine-dir", str(engine_dir), "--questions", str(questions_file),
                                               "--out", str(out), "--threads", "1", *map(str, args)])


def test_cli_writes_report(engine_dir, questions_file, tmp_path):
    result = _bench(engine_dir, questions_file, tmp_path / "r", "--limit", 1, "--max-new-tokens", 6,
                    "--categories", "qa,mt_bench")
    assert result.exit_code == 0, result.output
    assert "equality PASSED: 3/3 turns" in result.output and "overall" in result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["command"].startswith("kangaroo-bench --engine-dir") and "--categories qa,mt_bench" in report["command"]
    assert report["settings"]["max_new_tokens"] == 6 and report["overall"]["questions"] == 2


def test_cli_sampled_benchmark_reports_speed_without_token_check(engine_dir, questions_file, tmp_path):
    result = _bench(engine_dir, questions_file, tmp_path / "s", "--limit", 1, "--max-new-tokens", 8,
                    "--categories", "qa,mt_bench", "--temperature", 0.9, "--seed", 3)
    assert result.exit_code == 0, result.output
    assert "equality: not checked, 3 turns sampled at temperature 0.9" in result.output
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["settings"]["sampling"]["temperature"] == 0.9 and report["equality"]["sampled"] == 3
    assert all(t["equality"]["status"] == "sampled" for q in report["questions"] for t in q["turns"])
    assert "Not checked" in (tmp_path / "s" / "report.md").read_text()


def test_cli_fails_on_a_real_mismatch(engine_dir, questions_file, tmp_path, monkeypatch):
    real = KangarooEngine.generate

    def corrupt_kangaroo(self, *args, **kwargs):  # a decoder bug: Kangaroo's second token differs from AR's
        result = real(self, *args, **kwargs)
        if kwargs["config"].mode == "kangaroo" and len(result.output_ids) > 1:
            result.output_ids[1] = (result.output_ids[1] + 1) % len(self.tokenizer)
        return result

    monkeypatch.setattr(KangarooEngine, "generate", corrupt_kangaroo)
    result = _bench(engine_dir, questions_file, tmp_path / "r", "--limit", 1, "--max-new-tokens", 6, "--categories", "qa")
    eq = json.loads((tmp_path / "r" / "report.json").read_text())["equality"]
    assert eq["mismatches"] and eq["mismatches"][0]["question_id"] == 1 and eq["mismatches"][0]["position"] == 1
    assert eq["mismatches"][0]["margin"] >= 1e-4
    assert result.exit_code == 1 and "equality FAILED" in result.output


def test_cli_ctrl_c_keeps_finished_questions(engine_dir, questions_file, tmp_path, monkeypatch):
    real, calls = BenchRunner.run_question, []

    def interrupt_second(self, question):
        calls.append(question.question_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, question)

    monkeypatch.setattr(BenchRunner, "run_question", interrupt_second)
    result = _bench(engine_dir, questions_file, tmp_path / "r", "--max-new-tokens", 4)
    assert result.exit_code == 130
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["progress"]["interrupted"] and report["progress"]["finished"] == 1
    assert report["overall"]["questions"] == 1 and "Interrupted" in (tmp_path / "r" / "report.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--categories", "nope"], "unknown category nope"),
    (["--limit", "0"], "--limit must be at least 1"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["--gamma", "20"], "gamma 20 exceeds"),
])
def test_cli_user_errors(engine_dir, questions_file, tmp_path, args, message):
    result = _bench(engine_dir, questions_file, tmp_path / "r", *args)
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1


def test_cli_missing_engine_dir(questions_file, tmp_path):
    result = _bench(tmp_path / "nowhere", questions_file, tmp_path / "r")
    assert result.exit_code == 2 and result.output.startswith("error: ")


@pytest.mark.slow
def test_smollm2_multi_turn_chat(smollm2_engine):
    """The real model's chat template: turn 2 is the whole conversation, with the model's first answer in it."""
    engine = KangarooEngine.open(smollm2_engine, threads=1)
    question = select(load_questions(), ["mt_bench"], 1)
    bench = run_bench(engine, question, BenchConfig(engine.decode_config(max_new_tokens=8)), progress=None)
    first, second = bench.runs[0].turns
    assert bench.prompt_format == "chat template"
    assert all(t.equality.status == MATCH for t in (first, second))
    messages = [{"role": "user", "content": question[0].turns[0]},
                {"role": "assistant", "content": first.results["ar"].text},
                {"role": "user", "content": question[0].turns[1]}]
    assert second.results["kangaroo"].prompt_ids == engine.encode(messages, chat=True)
