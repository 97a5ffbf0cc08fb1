"""Small CLIP tokenizers written from a word list, in CLIP's own vocab.json/merges.txt form.

Nothing can be fetched from a model hub here, so the tiny test pipelines and the
embedded default model carry a tokenizer made by ``write_clip_tokenizer``: every
byte-level character (so any text tokenizes), plus each listed word as one token,
reached by merges that join its characters left to right.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def write_clip_tokenizer(words: Iterable[str], directory: str | Path, max_length: int = 77) -> CLIPTokenizer:
    """Write vocab.json, merges.txt and tokenizer_config.json to ``directory``; return the loaded tokenizer."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(token, len(vocab))
    ranks: dict[tuple[str, str], int] = {}
    for word in sorted({w.lower() for w in words if w}):
        # Add merges until BPE, applying every earlier merge first, makes the word one
        # token. A merge added last has the lowest priority, so it never changes how
        # the words before it split.
        while len(symbols := _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)) > 1:
            ranks[(symbols[0], symbols[1])] = len(ranks)
            vocab.setdefault(symbols[0] + symbols[1], len(vocab))
    for special in (BOS, EOS):
        vocab.setdefault(special, len(vocab))
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    merges = "\n".join(f"{a} {b}" for a, b in ranks)
    (directory / "merges.txt").write_text(f"#version: 0.2\n{merges}\n")
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": max_length,
                "bos_token": BOS,
                "eos_token": EOS,
                "unk_token": EOS,
                "pad_token": EOS,
            }
        )
    )
    return CLIPTokenizer.from_pretrained(directory, local_files_only=True)


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding as CLIP's tokenizer does it: merge the best-ranked adjacent pair until none is left."""
    while len(symbols) > 1:
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(symbols, symbols[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
    return symbols
