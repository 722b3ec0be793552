"""The Python API a service embeds: open an engine directory once, then serve requests one at a time.

    with KangarooEngine.open("engines/smollm2") as engine:         # close() frees caches and sessions
        config = engine.decode_config(max_new_tokens=64)          # manifest defaults + overrides, validated
        result = engine.generate("Why is the sky blue?", chat=True, config=config)
        baseline = engine.generate("Why is the sky blue?", chat=True, config=engine.decode_config(mode="ar"))
        for piece in (stream := engine.stream("Tell me a story", chat=True)):
            print(piece, end="", flush=True)
        stream.result.stats.to_dict()["mean_accepted"]
        async for piece in engine.astream("Tell me a story", chat=True):   # in an asyncio service
            ...

Decoding settings travel as one ``DecodeConfig`` (``config=``), the mode (Kangaroo or plain AR) among them; new
decoding options are DecodeConfig fields. A request's text is its own ``Detokenizer``'s (``detokenizer.py``).
Requests are served one at a time: the engine owns one set of KV caches, and a second request while one is
open raises at once. Use one engine per worker; close a stream you stop reading (``with`` / ``async with``).
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any, Sequence

import numpy as np

from ..chat import encode_chat, messages_of
from ..config import DecodeConfig
from ..contract.manifest import Manifest, inside
from ..contract.pin import open_pinned
from ..errors import ConfigError, EngineDirError, InputError
from ..runtimes import check_threads
from . import costs
from .backend import Backend, EngineRef
from .costs import CostTable
from .backends import open_backend
from .decode import Decoder
from .detokenizer import Detokenizer
from .policy import Calibration
from .stats import GenerationStats
from .stops import StopStrings
from .streaming import AsyncStream, Stream


def exact_rows(manifest: Manifest, backend: Backend, precision: str) -> int:
    """The row count exact mode pads decoding steps to: what the export's check found enough on this backend and
    precision, else the backend's own default (``Backend.exact_rows``)."""
    record = manifest.exact_check(backend.name, precision)
    return record["rows"] if record is not None and record.get("ok") else backend.exact_rows(precision, manifest.max_verify)


def check_exact(ref: EngineRef, backend: str | None) -> None:
    """Refuse exact mode where it cannot hold: graphs built before it, or a failed check recorded at export for
    ``backend`` (None: only the first)."""
    manifest = ref.manifest
    if manifest.exactness is None:
        raise ConfigError(f"{ref.directory} was built before exact mode (its attention is not slot-ordered): rebuild it "
                          "with kangaroo-export build, or open it with exact=False (--no-exact)")
    record = manifest.exact_check(backend, ref.precision) if backend else None
    if record is not None and not record.get("ok"):
        raise ConfigError(f"the export's exactness check failed for {backend} {ref.precision} (see kangaroo-check "
                          f"--engine-dir {ref.directory}): use exact=False (--no-exact), or another backend or precision")


@dataclass
class GenerationResult:
    prompt_ids: list[int]
    output_ids: list[int]
    text: str
    stop_reason: str  # "eos" | "max_new_tokens" | "cache_full" | "stop" (a stop string)
    stats: GenerationStats
    margins: list[float] | None = None  # target top-1 minus top-2 logit per output token, if recorded

    def to_dict(self) -> dict[str, Any]:
        d = {"prompt_ids": self.prompt_ids, "output_ids": self.output_ids, "text": self.text,
             "stop_reason": self.stop_reason, "stats": self.stats.to_dict()}
        if self.margins is not None:
            d["margins"] = self.margins
        return d


class KangarooEngine:
    def __init__(self, directory: Path, manifest: Manifest, backend, precision: str, tokenizer, exact: bool = True,
                 threads: int | None = None) -> None:
        self.directory, self.manifest, self.backend, self.precision = directory, manifest, backend, precision
        self.tokenizer, self.exact, self.threads = tokenizer, exact, threads
        rows = exact_rows(manifest, backend, precision) if exact else 1
        self.decoder = Decoder(backend, manifest.eos_token_ids, manifest.prefill_chunk, rows,
                               manifest.model.max_position_embeddings)
        self.decoder.calibration = calibration_of(manifest)
        self._lock = threading.Lock()

    @classmethod
    def open(cls, directory: str | Path, backend: str = "auto", precision: str | None = None,
             verify: bool = True, threads: int | None = None, exact: bool = True) -> "KangarooEngine":
        """Load an engine directory; ``verify`` checks the sha256 of the files it loads. Every file comes from one
        state of the directory: a load that overlapped its replacement (an export with --force) is retried once
        (``contract/pin.py``).

        ``exact`` (the default): greedy Kangaroo is bitwise identical to greedy AR on this backend and precision by
        construction (``runner/decode.py``: slot-ordered attention, decoding steps padded to one row count where the
        runtime needs it); False skips the padding, which is faster where it is needed and may flip near-ties.
        """
        check_threads(threads)
        return open_pinned(Path(directory), lambda root: cls._load(root, backend, precision, verify, threads, exact),
                           lambda engine: engine.close())

    @classmethod
    def _load(cls, directory: Path, backend: str, precision: str | None, verify: bool, threads: int | None,
              exact: bool) -> "KangarooEngine":
        manifest = Manifest.read(directory)
        precision = precision or manifest.precisions[0]
        if precision not in manifest.graphs:
            raise ConfigError(f"{directory} has no {precision} graphs (it has {', '.join(manifest.precisions)}): "
                              f"rebuild with --precision {precision}")
        if verify:
            manifest.verify_files(directory, (f"onnx/{precision}/", "tokenizer/"))
        ref = EngineRef(directory, manifest, precision, verify)
        if exact:
            check_exact(ref, None)
        runtime = open_backend(backend, ref, threads)
        try:
            if exact:
                check_exact(ref, runtime.name)
            return cls.from_backend(ref, runtime, exact, threads)
        except BaseException:
            runtime.close()
            raise

    @classmethod
    def from_backend(cls, ref: EngineRef, backend: Backend, exact: bool = True,
                     threads: int | None = None) -> "KangarooEngine":
        """An engine on an open ``backend`` for ``ref``'s directory and precision, with no checks (``open`` makes
        them; an export uses this to check its own output before it has a manifest to vouch for it)."""
        from transformers import AutoTokenizer  # after the checks: a bad directory fails fast

        try:
            tokenizer = AutoTokenizer.from_pretrained(inside(ref.directory, "tokenizer"), local_files_only=True)
        except Exception as err:  # transformers and tokenizers fail with OSError, ValueError, KeyError, ... on bad files
            why = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
            raise EngineDirError(f"{ref.directory}: cannot load its tokenizer ({why}): the tokenizer files are missing or "
                                 "corrupt, rebuild the engine directory") from err
        return cls(ref.directory, ref.manifest, backend, ref.precision, tokenizer, exact, threads)

    def cost_table(self) -> CostTable:
        """The measured graph costs the cost policy weighs (``runner/costs.py``): from the user's cache, else measured
        now (a second or so) and cached, keyed by this manifest, backend, precision and threads. A table not confirmed
        for ``costs.RECHECK_S`` (a cached one, or the one in use by a long-running engine) is checked against a quick
        plain step first and measured again when the machine now beats it (``costs.holds``: it was measured under
        load)."""
        if self.backend is None:
            raise InputError("this engine is closed: open the engine directory again")
        rows, table = self.manifest.max_verify, self.decoder.costs
        if table is not None and table.rows >= rows and not costs.due(table):
            return table
        from ..runtimes import thread_pool

        key = f"{self.manifest.digest()[:16]}-{thread_pool()}-rows{self.decoder.rows}"
        path = costs.cache_path(key, self.backend.name, self.precision, self.threads, rows)
        if table is None or table.rows < rows:
            table = costs.load(path)
        known = table
        if table is not None and costs.due(table):
            table = costs.confirmed(table) if costs.holds(table, self.decoder) else None
        if table is None:
            table = costs.measure(self.decoder, rows, backend=self.backend.name, precision=self.precision)
        if table is not known:  # measured or confirmed now: the next process need not check it again for a while
            costs.save(table, path)
        self.decoder.costs = table
        return table

    def close(self) -> None:
        """Free the KV caches, buffers and runtime sessions now (not at garbage collection); idempotent.

        Raises if a request is still open: close its stream first."""
        if self.backend is None:
            return
        if not self._lock.acquire(blocking=False):
            raise InputError("this engine is serving a request: close its stream before closing the engine")
        try:
            self.backend.close()
            self.backend = self.decoder = None
        finally:
            self._lock.release()

    def __enter__(self) -> "KangarooEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def encode(self, prompt: str | list[dict], chat: bool, parse_special: bool = False) -> list[int]:
        """Prompt token ids. ``chat``: under the chat template, message text as text (``kangaroo_trt/chat.py``);
        ``parse_special=True`` lets special tokens typed in messages act as control tokens (pass the ids as
        ``prompt_ids``). Without ``chat`` the prompt is raw model input, special tokens included."""
        if not chat:
            if not isinstance(prompt, str):
                raise InputError("a list of chat messages needs chat=True (--chat)")
            return self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        return encode_chat(self.tokenizer, messages_of(prompt), parse_special=parse_special)

    def check_prompt_ids(self, prompt_ids) -> list[int]:
        """Token ids as given: a non-empty list of integers below the vocabulary size (negatives do not wrap)."""
        vocab = self.manifest.model.vocab_size
        ids = list(prompt_ids)
        bad = next((i for i in ids if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < vocab), None)
        if not ids:
            raise InputError("prompt is empty: prompt_ids must hold at least one token id")
        if bad is not None:
            raise InputError(f"prompt_ids must be token ids in [0, {vocab}), got {bad!r}: encode text with engine.encode")
        return [int(i) for i in ids]

    def decode_config(self, gamma: int | None = None, tau: float | None = None, **overrides) -> DecodeConfig:
        """A validated ``DecodeConfig``: the manifest's gamma / tau unless given, ``overrides`` for any other field
        (mode, max_new_tokens, temperature, top_k, top_p, seed, ...; the dataclass's defaults otherwise).

        ``policy`` None or left out: the cost policy, unless ``tau``, a ``draft_floor`` or ``adaptive_gamma=False``
        is given, which belong to the tau policy (so an explicit tau never goes unused)."""
        if overrides.get("policy") is None:
            overrides.pop("policy", None)
            if tau is not None or overrides.get("draft_floor") or overrides.get("adaptive_gamma") is False:
                overrides["policy"] = "tau"
        d = self.manifest.decode
        config = DecodeConfig(gamma=d.gamma if gamma is None else gamma, tau=d.tau if tau is None else tau, **overrides)
        self._check(config)
        return config

    def _check(self, config: DecodeConfig) -> None:
        """What a DecodeConfig must satisfy for these engines (beyond its own validation)."""
        if config.gamma + 1 > self.manifest.max_verify:
            raise ConfigError(f"gamma {config.gamma} exceeds what the engines were built for "
                              f"(max {self.manifest.max_verify - 1}): lower --gamma or rebuild with a larger max_verify")

    def generate(self, prompt: str | list[dict] | None = None, **options) -> GenerationResult:
        """Generate to the end and return the result; takes the same arguments as ``stream``."""
        stream = self.stream(prompt, text=False, **options)
        for _ in stream:
            pass
        return stream.result

    def stream(self, prompt: str | list[dict] | None = None, *, prompt_ids: list[int] | None = None, chat: bool = False,
               config: DecodeConfig | None = None, stop: str | Sequence[str] = (), record_margins: bool = False,
               text: bool = True, mode: str | None = None) -> Stream:
        """Yield text pieces as tokens are committed (``text=False``: yield nothing); ``.result`` holds the result.

        ``prompt`` is text (chat messages with ``chat=True``; special tokens typed in them stay text, see
        ``encode``), or pass ``prompt_ids`` (checked against the vocabulary). ``config``: the decoding
        settings (``engine.decode_config(...)``; None: its defaults), the mode among them (``mode="ar"``: plain
        decoding, the baseline): greedy unless its temperature > 0, then lossless speculative sampling
        (``runner/verify.py``). ``stop``: stop strings (``runner/stops.py``). ``record_margins`` keeps the target's
        top-1 minus top-2 logit per token. ``mode``: the older way to pick the mode, kept for callers that pass it:
        given, it replaces ``config``'s.
        """
        if self.backend is None:
            raise InputError("this engine is closed: open the engine directory again")
        if config is None:
            config = self.decode_config(**({} if mode is None else {"mode": mode}))
        elif mode is not None:
            config = dataclasses.replace(config, mode=mode)  # validated there: a bad mode is one line
        self._check(config)
        if prompt_ids is None:
            if prompt is None:
                raise InputError("give a prompt or prompt_ids")
            prompt_ids = self.encode(prompt, chat)
        return Stream(self._run(self.check_prompt_ids(prompt_ids), config, record_margins, text, StopStrings(stop)))

    def astream(self, prompt: str | list[dict] | None = None, **options) -> AsyncStream:
        """``stream`` for asyncio services (same arguments): ``async for piece in engine.astream(...)``.

        Decoding runs in a worker thread; ``async with`` stops it early and frees the engine.
        """
        return AsyncStream(self.stream(prompt, **options))

    def _run(self, prompt_ids: list[int], config: DecodeConfig, record_margins: bool, text: bool, stops: StopStrings):
        if not self._lock.acquire(blocking=False):
            raise InputError("this engine is already serving a request: requests are served one at a time")
        try:
            if self.backend is None:  # closed between stream() and the first piece
                raise InputError("this engine is closed: open the engine directory again")
            if config.mode == "kangaroo" and config.policy == "cost":
                self.cost_table()  # measured (once) before the clock starts
            generation = self.decoder.generate(prompt_ids, config, record_margins)
            done, detokenizer = generation.transcript, Detokenizer(self._decode, stops, stream=text)
            start = perf_counter()
            for step, _ in generation:
                if not step.tokens:  # the cache is full
                    break
                piece, keep = detokenizer.add(step.tokens)
                if keep is not None:
                    done.truncate(keep, "stop")
                if piece:
                    yield piece
                if keep is not None:
                    break
            generation.close()
            total = perf_counter() - start
            output, rest = detokenizer.finish()
            if rest:
                yield rest
            t = generation.timings
            stats = GenerationStats(config=config, backend=self.backend.name, device=self.backend.device,
                                    precision=self.precision, new_tokens=len(done.tokens), prompt_tokens=len(prompt_ids),
                                    total_s=total, prefill_s=t["prefill"], draft_s=t["draft"], verify_s=t["verify"],
                                    acceptance=done.acceptance)
            return GenerationResult(prompt_ids, done.tokens, output, done.stop, stats, done.margins if record_margins else None)
        finally:
            self._lock.release()

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)


def calibration_of(manifest: Manifest) -> Calibration:
    """The adapter's acceptance calibration recorded at export (its meta's ``calibration``), else the identity map."""
    recorded = manifest.info.get("adapter", {}).get("calibration")
    try:
        return Calibration.from_dict(recorded) if isinstance(recorded, dict) else Calibration()
    except (TypeError, ValueError):
        return Calibration()
