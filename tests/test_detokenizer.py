"""The per-request incremental detokenizer (runner/detokenizer.py) against decoding everything every round.

``full_decoding`` is the engine's former text loop (all tokens decoded again each round): the detokenizer must show
the same pieces, keep the same tokens at a stop string and end with the same text, on three kinds of tokenizer
(byte-level BPE, SentencePiece-style with byte fallback, WordPiece with clean-up), with multi-byte characters split
across tokens and rounds, stop strings inside a round and across rounds, special tokens skipped; and it must
decode O(n) tokens over a generation, not O(n^2).
"""

from __future__ import annotations

import random

import pytest

from conftest import TINY_TEXT, tiny_tokenizer
from kangaroo_trt.runner.detokenizer import Detokenizer
from kangaroo_trt.runner.stops import StopStrings

TRICKY = ("héllo wörld — 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 costs €5, 日本語 and 🦘🦘 kangaroo. the quick brown fox; "
          "don't stop\n\nEND of it: naïve café 0123456789 ÿ")


def byte_level():
    return tiny_tokenizer()


def sentencepiece_like():
    """A Llama-style tokenizer: "▁" for spaces, unknown characters as <0xNN> byte tokens, the leading space stripped."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for ch in "▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:'—-!?\n":
        vocab.setdefault(ch, len(vocab))
    merges = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("▁", "k"), ("a", "n"), ("▁", "s"), ("o", "p")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def wordpiece_cleanup():
    """A BERT-style tokenizer whose decode joins words with spaces and then removes some (" ." -> "."): the text of a
    token depends on the one before, so windows sometimes do not extend and decoding everything takes over."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.train_from_iterator(TINY_TEXT + [TRICKY], trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[UNK]", "[SEP]"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[SEP]", clean_up_tokenization_spaces=True)


TOKENIZERS = {"byte-level": byte_level, "sentencepiece": sentencepiece_like, "wordpiece": wordpiece_cleanup}


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def tokenizer(request):
    return request.param, TOKENIZERS[request.param]()


def full_decoding(decode, rounds, stops: StopStrings, stream: bool = True):
    """The former loop: every round decodes all tokens; returns (pieces, text, tokens kept, stopped)."""
    tokens, shown, pieces, stopped = [], "", [], False
    for r in rounds:
        before = len(tokens)
        tokens = tokens + r
        full = decode(tokens)
        visible = full if not stops else full[:len(full) - stops.held(full)]
        if stops and (at := stops.find(full)) is not None:
            tokens = tokens[:next(n for n in range(before + 1, len(tokens) + 1) if stops.find(decode(tokens[:n])) is not None)]
            visible, stopped = full[:at], True
        if stream and not visible.endswith("\ufffd") and visible.startswith(shown):
            if visible[len(shown):]:
                pieces.append(visible[len(shown):])
            shown = visible
        if stopped:
            break
    text = decode(tokens)
    if stopped:
        text = text[:stops.find(text)]
    if stream and text.startswith(shown) and len(text) > len(shown):
        pieces.append(text[len(shown):])
    return pieces, text, tokens, stopped


def incremental(decode, rounds, stops: StopStrings, stream: bool = True):
    detokenizer, pieces, keep = Detokenizer(decode, stops, stream), [], None
    for r in rounds:
        piece, keep = detokenizer.add(r)
        if piece:
            pieces.append(piece)
        if keep is not None:
            break
    text, rest = detokenizer.finish()
    if rest:
        pieces.append(rest)
    return pieces, text, detokenizer.tokens, keep is not None


def split(tokens: list[int], rng: random.Random) -> list[list[int]]:
    """Rounds of 1 to 5 tokens, as Kangaroo commits them."""
    rounds, i = [], 0
    while i < len(tokens):
        n = rng.randint(1, 5)
        rounds.append(tokens[i:i + n])
        i += n
    return rounds


def _cases(tokenizer):
    ids = tokenizer(TRICKY, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    rng = random.Random(0)
    yield ids
    yield ids[:len(ids) // 2] + [eos] + ids[len(ids) // 2:]  # a special token inside: skipped in the text
    yield ids[3:]  # starts inside a multi-byte sequence on byte tokenizers
    for _ in range(3):  # random token ids: invalid UTF-8, special tokens anywhere
        yield [rng.randrange(len(tokenizer)) for _ in range(60)]


STOPS = [(), ("END",), ("\n\n", "zzz"), ("€5",), ("本語",), ("🦘",), ("o w",), ("kangaroo. the",), ("never said",)]


def test_same_pieces_text_and_stop_as_decoding_everything(tokenizer):
    name, tokenizer = tokenizer
    decode = lambda t: tokenizer.decode(t, skip_special_tokens=True)  # noqa: E731 (as KangarooEngine._decode)
    checked = stopped = partial = 0
    for tokens in _cases(tokenizer):
        partial += any(decode(tokens[:n]).endswith("\ufffd") for n in range(1, len(tokens)))
        for seed in range(4):
            rounds = split(tokens, random.Random(seed))
            for stop in STOPS:
                for stream in (True, False):
                    want = full_decoding(decode, rounds, StopStrings(stop), stream)
                    got = incremental(decode, rounds, StopStrings(stop), stream)
                    assert got == want, (stop, stream, rounds)
                    checked, stopped = checked + 1, stopped + want[3]
    assert stopped > 20 and checked > stopped  # stop strings were hit, and missed
    if name != "wordpiece":  # byte tokens: some texts end inside a multi-byte character, and are held back
        assert partial


def test_decodes_linearly_not_quadratically():
    """Tokens decoded over a generation grow with its length (the former loop decoded n^2/2 for n tokens)."""
    tokenizer = byte_level()
    tokens = tokenizer(TRICKY * 12, add_special_tokens=False)["input_ids"]
    seen = []

    def decode(t):
        seen.append(len(t))
        return tokenizer.decode(t, skip_special_tokens=True)

    for stops in (StopStrings(), StopStrings(["never said"])):
        seen.clear()
        pieces, text, _, _ = incremental(decode, split(tokens, random.Random(1)), stops)
        assert "".join(pieces) == text == tokenizer.decode(tokens, skip_special_tokens=True)
        assert sum(seen) < 25 * len(tokens), (sum(seen), len(tokens))
    seen.clear()
    full_decoding(decode, split(tokens, random.Random(1)), StopStrings())
    assert sum(seen) > 100 * len(tokens)  # what the former loop cost: the bound above does tell them apart


def test_nothing_is_added_after_a_stop():
    detokenizer = Detokenizer(lambda t: "".join(map(chr, t)), StopStrings("c"))
    assert detokenizer.add([ord("a"), ord("b")]) == ("ab", None)
    assert detokenizer.add([ord("c"), ord("d")]) == ("", 3)
    with pytest.raises(ValueError, match="already ended"):
        detokenizer.add([ord("e")])
    assert detokenizer.finish() == ("ab", "")
