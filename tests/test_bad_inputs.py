"""Bad input through the real command lines (subprocesses): exit status 2 (130 on Ctrl-C; SIGTERM: death by the
signal, 143 in a shell, after cleaning up), exactly
one line on stderr starting ``error:``, no traceback, no file of the user's lost, no temporary directory left.

The rows share one tiny engine and one tiny model; all rows run at once (a pool as wide as the machine), each
test then checks its own row. Only the signal rows and the concurrent-export test run real exports.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = "llama-gqa-tied"


def cli_command(cli: str, *args) -> list:
    return [sys.executable, "-m", f"kangaroo_trt.cli.{cli}_cli", *args]


def cli_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", LC_ALL="C.UTF-8")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@dataclass
class Row:
    cli: str
    args: Callable[[dict], list]  # the row's paths -> arguments
    message: str  # a fragment the error line must contain
    setup: Callable[[dict], None] = lambda p: None  # make the row's files; "keep" lists the user's files to check
    stdin: bytes | None = None
    cwd: str | None = None  # a key of the paths dict
    status: int = 2
    skip: Callable[[], str | None] = lambda: None


def _is_root() -> str | None:
    return "root ignores directory permissions" if os.geteuid() == 0 else None


def _tensorrt_present() -> str | None:
    from kangaroo_trt.engines.builder import tensorrt_available

    return "TensorRT is installed here" if tensorrt_available() else None


def _copy_engine(p: dict, edit=None, then=None) -> None:
    shutil.copytree(p["engine"], p["tmp"] / "engine")
    if edit:
        d = json.loads((p["tmp"] / "engine" / "manifest.json").read_text())
        edit(d)
        (p["tmp"] / "engine" / "manifest.json").write_text(json.dumps(d))
    if then:
        then(p["tmp"] / "engine")


def _user_file(path: Path, text: str = "keep") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _foreign_site(p):
    _user_file(p["tmp"] / "site" / "manifest.json", "{}")
    _user_file(p["tmp"] / "site" / "notes.txt")


def _locked_parent(p):
    (p["tmp"] / "locked").mkdir()
    (p["tmp"] / "locked").chmod(0o500)


def _bad_utf8(name: str) -> Callable[[dict], None]:
    return lambda p: (p["tmp"] / name).write_bytes(b'{"prompt": "caf\xe9"}\n')


def _bench_questions(p):
    (p["tmp"] / "q.jsonl").write_bytes(b'{"question_id": 1, "category": "qa", "turns": ["caf\xe9"]}\n')


def _lone_surrogate(name: str, record: str) -> Callable[[dict], None]:
    """A valid JSON line whose escape "\\ud800" is a lone surrogate, which UTF-8 cannot encode."""
    return lambda p: (p["tmp"] / name).write_text(record.replace("X", "\\ud800") + "\n")


def _data(p):
    (p["tmp"] / "data.jsonl").write_text('{"prompt": "hello there, how are you"}\n')


def _text_data(p):  # trainable by a model without a chat template
    (p["tmp"] / "data.jsonl").write_text("".join(f'{{"text": "hello there number {i}, the quick fox"}}\n' for i in range(8)))


def _bad_tokenizer_model(p):
    shutil.copytree(p["model"], p["tmp"] / "model")
    (p["tmp"] / "model" / "tokenizer.json").write_text('{"version": "1.0", "model": 5}')


def _no_tokenizer_json(d):
    del d["files"]["tokenizer/tokenizer.json"]  # as if the export had written none: only the load can notice


RUN = lambda *extra: lambda p: ["--engine-dir", p["engine"], "--prompt", "hi", *extra]  # noqa: E731

ROWS: dict[str, Row] = {
    # kangaroo-run
    "run-threads-0": Row("run", RUN("--threads", "0"), "threads"),
    "run-threads-negative": Row("run", RUN("--threads", "-1"), "threads"),
    "run-threads-huge": Row("run", RUN("--threads", "100000"), "threads"),
    # the process-wide pool was sized before --threads was checked: 3,000 threads, then out of memory
    "run-threads-huge-shared-pool": Row("run", RUN("--threads", "100000", "--thread-pool", "shared"), "threads"),
    "run-prompt-past-model-limit": Row("run", lambda p: ["--engine-dir", p["engine"], "--prompt", "hello world " * 400],
                                       "max_position_embeddings"),
    "run-tokenizer-json-missing": Row("run", lambda p: ["--engine-dir", p["tmp"] / "engine", "--prompt", "hi"], "tokenizer",
                                      setup=lambda p: _copy_engine(p, _no_tokenizer_json, then=lambda e: (
                                          e / "tokenizer" / "tokenizer.json").unlink())),
    "run-manifest-eos-outside-vocab": Row("run", lambda p: ["--engine-dir", p["tmp"] / "engine", "--prompt", "hi"],
                                          "eos_token_ids", setup=lambda p: _copy_engine(p, lambda d: d.update(
                                              eos_token_ids=[10 ** 6]))),
    "run-temperature-tiny": Row("run", RUN("--temperature", "1e-308"), "temperature"),
    "run-temperature-inf": Row("run", RUN("--temperature", "inf"), "temperature"),
    "run-seed-negative": Row("run", RUN("--temperature", "0.7", "--seed", "-1"), "seed"),
    "run-stdin-not-utf8": Row("run", lambda p: ["--engine-dir", p["engine"], "--prompt", "-"], "UTF-8", stdin=b"caf\xe9\n"),
    "run-argv-not-utf8": Row("run", lambda p: ["--engine-dir", p["engine"], "--prompt", b"caf\xe9"], "UTF-8"),
    "run-engine-dir-is-a-file": Row("run", lambda p: ["--engine-dir", p["tmp"] / "f", "--prompt", "hi"], "not a directory",
                                    setup=lambda p: _user_file(p["tmp"] / "f")),
    "run-graph-outside": Row("run", lambda p: ["--engine-dir", p["tmp"] / "engine", "--prompt", "hi"], "outside",
                             setup=lambda p: (shutil.copytree(p["engine"] / "onnx" / "fp32", p["tmp"] / "outside"),
                                              _copy_engine(p, lambda d: d["graphs"]["fp32"]["deep"].update(
                                                  file="../outside/deep.onnx")))),
    "run-no-checksums": Row("run", lambda p: ["--engine-dir", p["tmp"] / "engine", "--prompt", "hi"], "sha256",
                            setup=lambda p: _copy_engine(p, lambda d: d.update(files={}))),
    "run-manifest-str-field": Row("run", lambda p: ["--engine-dir", p["tmp"] / "engine", "--prompt", "hi"], "max_seq_len",
                                  setup=lambda p: _copy_engine(p, lambda d: d.update(max_seq_len="128"))),
    "run-manifest-kv-heads-0": Row("run", lambda p: ["--engine-dir", p["tmp"] / "engine", "--prompt", "hi"], "num_kv_heads",
                                   setup=lambda p: _copy_engine(p, lambda d: d["model"].update(num_kv_heads=0))),
    # kangaroo-export
    "export-force-foreign-manifest": Row("export", lambda p: ["build", "--model", p["model"], "--random-adapter", "--out",
                                                              p["tmp"] / "site", "--force"], "not an engine directory",
                                         setup=_foreign_site),
    "export-force-extra-file": Row("export", lambda p: ["build", "--model", p["model"], "--random-adapter", "--out",
                                                        p["tmp"] / "engine", "--force"], "notes.txt",
                                   setup=lambda p: _copy_engine(p, then=lambda e: _user_file(e / "notes.txt"))),
    "export-force-symlink": Row("export", lambda p: ["build", "--model", p["model"], "--random-adapter", "--out",
                                                     p["tmp"] / "link", "--force"], "symbolic link",
                                setup=lambda p: (_copy_engine(p), (p["tmp"] / "link").symlink_to(p["tmp"] / "engine"))),
    "export-out-dot-in-engine": Row("export", lambda p: ["build", "--model", p["model"], "--random-adapter", "--out", ".",
                                                         "--force"], "current directory", setup=_copy_engine, cwd="engine"),
    "export-adapter-and-random": Row("export", lambda p: ["build", "--model", p["model"], "--random-adapter", "--adapter",
                                                          p["engine"] / "adapter", "--out", p["tmp"] / "e"], "--random-adapter"),
    "export-seq-len-9": Row("export", lambda p: ["build", "--model", p["model"], "--random-adapter", "--max-seq-len", "9",
                                                 "--out", p["tmp"] / "e"], "max_seq_len"),
    "export-out-under-a-file": Row("export", lambda p: ["build", "--model", p["model"], "--random-adapter", "--out",
                                                        p["tmp"] / "f" / "e"], "not a directory",
                                   setup=lambda p: _user_file(p["tmp"] / "f")),
    "export-out-unwritable": Row("export", lambda p: ["build", "--model", p["model"], "--random-adapter", "--out",
                                                      p["tmp"] / "locked" / "e"], "ermission", setup=_locked_parent,
                                 skip=_is_root),
    "export-out-cannot-be-created": Row("export", lambda p: ["build", "--model", p["model"], "--random-adapter", "--out",
                                                             "/proc/kangaroo-out/e"], "/proc/kangaroo-out"),  # even as root
    "export-tensorrt-require": Row("export", lambda p: ["build", "--model", p["model"], "--random-adapter", "--tensorrt",
                                                        "require", "--out", p["tmp"] / "e"], "TensorRT", skip=_tensorrt_present),
    "export-out-name-too-long": Row("export", lambda p: ["build", "--model", p["model"], "--random-adapter", "--max-seq-len",
                                                         "64", "--out", p["tmp"] / ("e" * 240)], "bytes long"),
    "export-tokenizer-corrupt": Row("export", lambda p: ["build", "--model", p["tmp"] / "model", "--random-adapter",
                                                         "--max-seq-len", "64", "--out", p["tmp"] / "e"], "tokenizer",
                                       setup=_bad_tokenizer_model),
    # kangaroo-train / kangaroo-tune
    "train-lr-nan": Row("train", lambda p: ["--model", p["model"], "--data", p["tmp"] / "data.jsonl", "--lr", "nan",
                                            "--out", p["tmp"] / "a"], "finite", setup=_text_data),
    "train-out-under-a-file": Row("train", lambda p: ["--model", p["model"], "--data", p["tmp"] / "data.jsonl", "--out",
                                                      p["tmp"] / "f" / "a"], "not a directory",
                                  setup=lambda p: (_text_data(p), _user_file(p["tmp"] / "f"))),
    "train-data-not-utf8": Row("train", lambda p: ["--model", p["model"], "--data", p["tmp"] / "d.jsonl", "--out",
                                                   p["tmp"] / "a"], "UTF-8", setup=_bad_utf8("d.jsonl")),
    "train-data-lone-surrogate": Row("train", lambda p: ["--model", p["model"], "--data", p["tmp"] / "d.jsonl", "--out",
                                                         p["tmp"] / "a"], "d.jsonl:1 is not UTF-8 text",
                                     setup=_lone_surrogate("d.jsonl", '{"prompt": "hello X there, how are you"}')),
    "train-exclude-missing": Row("train", lambda p: ["--model", p["model"], "--data", p["tmp"] / "data.jsonl", "--exclude",
                                                     p["tmp"] / "nope.jsonl", "--out", p["tmp"] / "a"], "nope.jsonl",
                                 setup=_data),
    "train-threads-0": Row("train", lambda p: ["--model", p["model"], "--data", p["tmp"] / "data.jsonl", "--threads", "0",
                                               "--out", p["tmp"] / "a"], "threads", setup=_data),
    "tune-gammas-not-numbers": Row("tune", lambda p: ["--model", p["model"], "--data", p["tmp"] / "data.jsonl", "--adapter",
                                                      p["tmp"] / "a", "--gammas", "a,b"], "--gammas", setup=_data),
    # kangaroo-bench
    "bench-questions-not-utf8": Row("bench", lambda p: ["--engine-dir", p["engine"], "--questions", p["tmp"] / "q.jsonl",
                                                        "--out", p["tmp"] / "r"], "UTF-8", setup=_bench_questions),
    "bench-questions-lone-surrogate": Row("bench", lambda p: ["--engine-dir", p["engine"], "--questions",
                                                              p["tmp"] / "q.jsonl", "--out", p["tmp"] / "r"],
                                          "q.jsonl:1 is not UTF-8 text",
                                          setup=_lone_surrogate("q.jsonl", '{"question_id": 1, "category": "qa", '
                                                                           '"turns": ["X"]}')),
    "bench-out-under-a-file": Row("bench", lambda p: ["--engine-dir", p["engine"], "--limit", "1", "--out",
                                                      p["tmp"] / "f" / "r"], "not a directory",
                                  setup=lambda p: _user_file(p["tmp"] / "f")),
    "bench-threads-0": Row("bench", lambda p: ["--engine-dir", p["engine"], "--threads", "0", "--out", p["tmp"] / "r"],
                           "threads"),
    "bench-threads-huge-shared-pool": Row("bench", lambda p: ["--engine-dir", p["engine"], "--threads", "100000",
                                                              "--thread-pool", "shared", "--out", p["tmp"] / "r"], "threads"),
    # kangaroo-serve / kangaroo-serve-load: option values only (the server's own inputs: tests/test_serve.py)
    "serve-shutdown-timeout-nan": Row("serve", lambda p: ["--engine-dir", p["engine"], "--port", "0",
                                                          "--shutdown-timeout", "nan"], "finite"),
    "serve-load-time-limit-inf": Row("serve_load", lambda p: ["--engine-dir", p["engine"], "--time-limit", "inf",
                                                              "--out", p["tmp"] / "r"], "finite"),
}


@dataclass
class Outcome:
    status: int
    stderr: str
    files_before: dict[str, bytes] = field(default_factory=dict)
    tmp: Path | None = None


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def _run_row(name: str, row: Row, shared: dict, base: Path) -> Outcome:
    paths = {**shared, "tmp": base / name}
    paths["tmp"].mkdir()
    row.setup(paths)
    before = _snapshot(paths["tmp"])
    cwd = paths["tmp"] / row.cwd if row.cwd else paths["tmp"]
    args = [a if isinstance(a, bytes) else str(a) for a in row.args(paths)]
    proc = subprocess.run(cli_command(row.cli, *args), input=row.stdin or b"", capture_output=True, cwd=cwd,
                          env=cli_env(), timeout=300)
    if (paths["tmp"] / "locked").exists():
        (paths["tmp"] / "locked").chmod(0o700)
    return Outcome(proc.returncode, proc.stderr.decode("utf-8", "replace"), before, paths["tmp"])


@pytest.fixture(scope="module")
def outcomes(tiny_engine, tiny_model, tmp_path_factory):
    shared = {"engine": tiny_engine(MODEL, max_seq_len=64)[0], "model": tiny_model(MODEL)}
    base = tmp_path_factory.mktemp("bad-inputs")
    rows = {n: r for n, r in ROWS.items() if r.skip() is None}
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {n: pool.submit(_run_row, n, r, shared, base) for n, r in rows.items()}
        return {n: f.result() for n, f in futures.items()}


def assert_one_line_error(status: int, stderr: str, want_status: int = 2, message: str = "") -> None:
    lines = stderr.strip().splitlines()
    assert status == want_status, stderr
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert message in lines[0], stderr


def assert_nothing_left(directory: Path) -> None:
    """No hidden temporary directory (ours are ``.NAME.*``) anywhere under ``directory``."""
    left = [str(p) for p in directory.rglob(".*") if p.is_dir() and not p.name.startswith((".cache", ".git"))]
    assert left == [], left


@pytest.mark.parametrize("name", list(ROWS))
def test_bad_input(outcomes, name):
    row = ROWS[name]
    if row.skip() is not None:
        pytest.skip(row.skip())
    outcome = outcomes[name]
    assert_one_line_error(outcome.status, outcome.stderr, row.status, row.message)
    for rel, content in outcome.files_before.items():  # every file the user had is still there, unchanged
        assert (outcome.tmp / rel).read_bytes() == content, rel
    assert_nothing_left(outcome.tmp)


# -- signals and concurrency: real exports ------------------------------------------------------------------------------

def _export(model: Path, out: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen(cli_command("export", "build", "--model", str(model), "--random-adapter", "--max-seq-len", "64",
                                        "--out", str(out), *extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=cli_env())


def _wait_for_temp(parent: Path, name: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    mine = f".{name}.kangaroo-tmp-{proc.pid}-"  # created once the export holds the lock on --out
    while not any(p.name.startswith(mine) and p.is_dir() for p in parent.iterdir()):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < end, "the export never started writing"
        time.sleep(0.05)


@pytest.mark.parametrize("sig,status", [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, 130)], ids=["sigterm", "sigint"])
def test_signal_during_export_cleans_up(tiny_model, tmp_path, sig, status):
    out = tmp_path / "out"
    proc = _export(tiny_model(MODEL), out)
    _wait_for_temp(tmp_path, "out", proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert_one_line_error(proc.returncode, stderr.decode(), status)
    assert not out.exists()
    assert_nothing_left(tmp_path)


def test_ctrl_c_in_run_exits_130(tiny_engine):
    engine = tiny_engine(MODEL, max_seq_len=64)[0]
    proc = subprocess.Popen(cli_command("run", "--engine-dir", str(engine), "--prompt", "-"), stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=cli_env())
    syscall = Path(f"/proc/{proc.pid}/syscall")
    end = time.monotonic() + 60
    while time.monotonic() < end:  # until it blocks reading the prompt from standard input (read(0, ...))
        try:
            if syscall.read_text().startswith("0 0x0 "):
                break
        except OSError:
            time.sleep(5)
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    proc.stdin.close()
    assert_one_line_error(proc.returncode, stderr.decode(), 130, "interrupted")


def test_concurrent_exports_to_one_out(tiny_model, tmp_path):
    """Two exports to one --out: the second fails at once, the first wins; a stale temporary directory of a dead
    export is swept; a directory created at --out while an export runs is never replaced."""
    out = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.kangaroo-tmp-{int(dead.stdout)}-x"
    stale.mkdir()
    (stale / "deep.onnx.data").write_bytes(b"x" * 1000)
    first = _export(tiny_model(MODEL), out)
    _wait_for_temp(tmp_path, "out", first)
    first.send_signal(signal.SIGSTOP)  # paused mid-export, holding --out: the second one runs while it is
    try:
        second = subprocess.run(cli_command("export", "build", "--model", str(tiny_model(MODEL)), "--random-adapter",
                                            "--max-seq-len", "64", "--out", str(out)), capture_output=True, env=cli_env(),
                                timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    assert_one_line_error(second.returncode, second.stderr.decode(), 2, "another export")
    _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr.decode()
    assert (out / "manifest.json").is_file()
    assert_nothing_left(tmp_path)
