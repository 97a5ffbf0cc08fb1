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
    merges: list[str] = []
    for word in sorted({w.lower() for w in words if w}):
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        joined = symbols[0]
        for symbol in symbols[1:]:
            merge = f"{joined} {symbol}"
            if merge not in merges:
                merges.append(merge)
            joined += symbol
            vocab.setdefault(joined, len(vocab))
    for special in (BOS, EOS):
        vocab.setdefault(special, len(vocab))
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
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
