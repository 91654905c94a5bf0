"""CLIP's tokenizer: text -> (B, 77) token ids for `CLIP.encode_text`.

Byte-level BPE over lower-cased, cleaned text, with `<start_of_text>` and `<end_of_text>`
around each string and zero padding. The merges table ships with the package
(`sam_jax/assets/bpe_simple_vocab_16e6.txt.gz`, MIT licensed, see the LICENSE file beside
it); any other merges file of the same format can be passed as `bpe_path`.

Cleaning repairs what commonly differs between copies of the same text (HTML entities,
curly quotes, Latin ligatures, full-width ASCII, control characters, Unicode composition)
without the `ftfy` dependency; unlike `ftfy`, it does not guess at mojibake.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.resources
import os
import unicodedata
from collections.abc import Sequence

import numpy as np

CONTEXT_LENGTH = 77
SOT = "<start_of_text>"
EOT = "<end_of_text>"
_DEFAULT_BPE = "bpe_simple_vocab_16e6.txt.gz"
# The released vocabulary: 256 bytes, 256 end-of-word bytes, these merges, 2 special tokens.
_NUM_MERGES = 49152 - 256 - 2
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")

_CONTROL_CHARS = dict.fromkeys(
    [*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F, *range(0x206A, 0x2070), 0xFEFF]
    + [*range(0xFFF9, 0xFFFD)]
)
# Curly and modifier-letter quotes -> straight quotes.
_QUOTES = {
    **dict.fromkeys([0x02BC, *range(0x2018, 0x201C)], "'"),
    **dict.fromkeys(range(0x201C, 0x2020), '"'),
}
# Latin ligatures and full-width forms -> their compatibility decomposition.
_COMPAT = {
    c: unicodedata.normalize("NFKC", chr(c))
    for c in [*map(ord, "ĲĳŉǄǅǆǇǈǉǊǋǌǱǲǳ"), *range(0xFB00, 0xFB07), *range(0xFF01, 0xFFF0)]
    if unicodedata.normalize("NFKC", chr(c)) != chr(c)
}
_COMPAT[0x3000] = " "  # ideographic space


def clean_text(text: str) -> str:
    """Repair, unescape, collapse whitespace and lower-case, as CLIP was trained on."""
    text = text.translate(_COMPAT).translate(_QUOTES).translate(_CONTROL_CHARS)
    text = unicodedata.normalize("NFC", text)
    # Entities are unescaped up to three times (doubly escaped web text), but only twice
    # when the text contains markup, where one level of escaping is meant.
    for _ in range(2 if "<" in text else 3):
        text = html.unescape(text)
    return " ".join(text.split()).lower()


@functools.lru_cache
def _byte_to_unicode() -> dict[int, str]:
    """A printable character for every byte, so that BPE runs on strings without spaces or
    control characters: printable Latin-1 bytes map to themselves, the rest to 256 + n.
    The order (printable bytes first) is the order of the vocabulary's first 256 entries."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return table


def _char_kind(ch: str) -> str:
    cat = unicodedata.category(ch)
    if cat[0] == "L":
        return "letter"
    if cat[0] == "N":
        return "number"
    if ch.isspace():
        return "space"
    return "other"


def split_words(text: str, special_tokens: Sequence[str] = (SOT, EOT)) -> list[str]:
    """Pre-tokenisation: special tokens, English contractions, runs of letters, single
    digits, and runs of anything else that is not whitespace; whitespace is dropped."""
    words, i, n = [], 0, len(text)
    while i < n:
        special = next((t for t in special_tokens if text.startswith(t, i)), None)
        if special is not None:
            words.append(special)
            i += len(special)
            continue
        if text[i] == "'":
            contraction = next(
                (c for c in _CONTRACTIONS if text[i : i + len(c)].lower() == c), None
            )
            if contraction is not None:
                words.append(text[i : i + len(contraction)])
                i += len(contraction)
                continue
        kind = _char_kind(text[i])
        if kind == "space":
            i += 1
            continue
        j = i + 1
        if kind != "number":  # letters and "other" characters group into runs
            while j < n and _char_kind(text[j]) == kind:
                j += 1
        words.append(text[i:j])
        i = j
    return words


class CLIPTokenizer:
    """`tokenizer(["a dog", "a cat"])` -> (2, 77) int32 token ids.

    Strings longer than the context are cut, keeping `<end_of_text>` as the last token
    (the text tower reads its features there).
    """

    def __init__(self, bpe_path: str | os.PathLike | None = None, context_length=CONTEXT_LENGTH):
        merges = _read_merges(bpe_path)
        byte_chars = list(_byte_to_unicode().values())
        vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
        vocab += [SOT, EOT]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = dict(enumerate(vocab))
        self.bpe_ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.sot_token_id = self.encoder[SOT]
        self.eot_token_id = self.encoder[EOT]
        self.vocab_size = len(vocab)
        self.context_length = context_length
        self._byte_encoder = _byte_to_unicode()
        self._byte_decoder = {c: b for b, c in self._byte_encoder.items()}
        self._cache: dict[str, tuple[str, ...]] = {SOT: (SOT,), EOT: (EOT,)}

    def bpe(self, word: str) -> tuple[str, ...]:
        """Merge the characters of one word (already byte-mapped) by merge rank."""
        if word in self._cache:
            return self._cache[word]
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            ranked = [
                (self.bpe_ranks.get(pair, np.inf), pair) for pair in zip(parts[:-1], parts[1:])
            ]
            rank, (first, second) = min(ranked, key=lambda r: r[0])
            if rank == np.inf:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = tuple(parts)
        return self._cache[word]

    def encode(self, text: str) -> list[int]:
        """Token ids of one string, without the start and end tokens."""
        ids = []
        for word in split_words(clean_text(text)):
            if word in (SOT, EOT):
                ids.append(self.encoder[word])
                continue
            mapped = "".join(self._byte_encoder[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder[token] for token in self.bpe(mapped))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids (special tokens included, padding zeros excluded by the caller)."""
        text = "".join(self.decoder[int(i)] for i in ids)
        raw = bytearray(self._byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ")

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None):
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.context_length
        out = np.zeros((len(texts), length), np.int32)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > length:
                ids = ids[:length]
                ids[-1] = self.eot_token_id
            out[row, : len(ids)] = ids
        return out


def _read_merges(bpe_path) -> list[tuple[str, str]]:
    try:
        if bpe_path is None:
            resource = importlib.resources.files("sam_jax").joinpath("assets", _DEFAULT_BPE)
            with resource.open("rb") as f:
                raw = gzip.decompress(f.read())
        else:
            with open(bpe_path, "rb") as f:
                raw = f.read()
            if str(bpe_path).endswith(".gz"):
                raw = gzip.decompress(raw)
    except (OSError, FileNotFoundError) as e:
        where = bpe_path or f"sam_jax/assets/{_DEFAULT_BPE} (missing from this installation)"
        raise FileNotFoundError(f"cannot read the CLIP BPE merges file {where}: {e}") from e
    lines = raw.decode("utf-8").split("\n")
    # The first line is a version header.
    merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
    if len(merges) != _NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(
            f"{bpe_path or _DEFAULT_BPE}: expected a version line and {_NUM_MERGES} merges "
            "of two symbols each"
        )
    return merges


@functools.lru_cache
def default_tokenizer() -> CLIPTokenizer:
    """The tokenizer of all released CLIP models (built once: reading the merges takes ~0.3 s)."""
    return CLIPTokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
    """(B, context_length) int32 token ids with the released CLIP vocabulary."""
    return default_tokenizer()(texts, context_length)


__all__ = ["CLIPTokenizer", "clean_text", "split_words", "tokenize", "default_tokenizer"]
