"""kangaroo-bench: Spec-Bench speedup, acceptance and CTAR of Kangaroo against plain AR, with an equality check.

    questions = select(load_questions(), limit=2)
    bench = run_bench(engine, questions, BenchConfig(engine.decode_config(max_new_tokens=64)))
    report = build_report(bench, engine)
    write_report(report, Path("bench-report"))
"""

from .questions import Question, load_questions, select
from .report import build_report, write_report
from .runner import BenchConfig, BenchRun, run_bench

__all__ = ["BenchConfig", "BenchRun", "Question", "build_report", "load_questions", "run_bench", "select",
           "write_report"]
