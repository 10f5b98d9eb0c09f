"""Turning streamed token ids into text as they arrive (a token may end in the middle of a UTF-8 character)."""

from __future__ import annotations

import codecs

from retnet.data.tokenizers import Tokenizer


class TextStream:
    """Feed token ids one at a time; get back the text that is complete so far."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._decoder.decode(self.tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)
