"""The chat template: how messages become the text the model reads, turn by turn.

A message renders as ``<|role|>\\n{content}<|end|>`` and the reply is prompted by ``<|assistant|>\\n``. A
conversation's token sequence is the concatenation of its turns: each turn's new messages, the generation
prompt, the generated tokens, and ``<|end|>`` unless the model generated it (or an end-of-sequence
token). So a turn in a stored conversation processes exactly the tokens a one-pass run over the whole
conversation would see after the previous turn. A model directory may override the markers with ``chat_template.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

TEMPLATE_NAME = "chat_template.json"
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatTemplate:
    role_prefix: str = "<|{role}|>\n"
    end_of_turn: str = "<|end|>"

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> ChatTemplate:
        path = Path(model_dir) / TEMPLATE_NAME
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text())
            tpl = cls(**data)
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"{path}: expected {{'role_prefix': ..., 'end_of_turn': ...}}: {exc}") from exc
        if "{role}" not in tpl.role_prefix or not tpl.end_of_turn:
            raise ValueError(f"{path}: role_prefix must contain '{{role}}' and end_of_turn must be non-empty")
        return tpl

    def render(self, messages: list[tuple[str, str]], add_generation_prompt: bool = True) -> str:
        """``[(role, content), ...]`` -> text, ending with the assistant prompt."""
        text = "".join(self.role_prefix.format(role=role) + content + self.end_of_turn for role, content in messages)
        if add_generation_prompt:
            text += self.role_prefix.format(role="assistant")
        return text

    def closing(self, ended_turn: bool) -> str:
        """What follows the generated tokens: nothing if the model ended the turn itself (it generated
        ``end_of_turn`` or an end-of-sequence token), else ``end_of_turn``."""
        return "" if ended_turn else self.end_of_turn
