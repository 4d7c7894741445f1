"""Tokenizers: a built-in byte tokenizer, and local sentencepiece / HF tokenizers files when installed.

Byte level: a token is a byte (vocab 256); documents are joined by the separator byte 0x00, which
never occurs in text files, so the model learns document boundaries without an extra token id.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from capidsl.data.errors import DataError

SEPARATOR = 0


class ByteTokenizer:
    vocab_size = 256

    def encode(self, text: str | bytes) -> np.ndarray:
        data = text.encode("utf-8") if isinstance(text, str) else text
        return np.frombuffer(data, dtype=np.uint8).astype(np.int32)

    def decode(self, tokens) -> str:
        return bytes(int(t) & 0xFF for t in tokens if int(t) != SEPARATOR).decode("utf-8", errors="replace")


class FileTokenizer:
    """A local sentencepiece `.model` or HF tokenizers `.json`; the package is imported only when used."""

    def __init__(self, path: str):
        p = Path(path)
        if not p.is_file():
            raise DataError(f"tokenizer file {path} does not exist", subject="data.tokenizer",
                            hint="use 'byte' or a path to a local .model/.json file")
        try:
            if p.suffix == ".model":
                import sentencepiece

                self._sp = sentencepiece.SentencePieceProcessor(model_file=str(p))
                self.vocab_size = int(self._sp.get_piece_size())
                self._encode = lambda s: self._sp.encode(s)
                self._encode_batch = lambda texts: self._sp.encode(texts)
                self._decode = lambda ids: self._sp.decode(ids)
            else:
                import tokenizers

                self._tk = tokenizers.Tokenizer.from_file(str(p))
                self.vocab_size = int(self._tk.get_vocab_size())
                self._encode = lambda s: self._tk.encode(s).ids
                # encode_batch_fast: the same ids without character offsets, which nothing here reads
                batch = getattr(self._tk, "encode_batch_fast", self._tk.encode_batch)
                self._encode_batch = lambda texts: [e.ids for e in batch(texts)]
                self._decode = lambda ids: self._tk.decode(ids)
        except ImportError as err:
            raise DataError(f"reading {p.name} needs the package {err.name!r}, which is not installed",
                            subject="data.tokenizer", hint=f"pip install {err.name}") from None

    def encode(self, text: str | bytes) -> np.ndarray:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return np.asarray(self._encode(text), dtype=np.int32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Many texts at once (the tokenizer's own batch call: one crossing into Rust/C++, not one per text)."""
        return [np.asarray(ids, dtype=np.int32) for ids in self._encode_batch(texts)]

    def decode(self, tokens) -> str:
        return self._decode([int(t) for t in tokens])


def get_tokenizer(name: str):
    """'byte' or a path to a tokenizer file."""
    return ByteTokenizer() if name == "byte" else FileTokenizer(name)
