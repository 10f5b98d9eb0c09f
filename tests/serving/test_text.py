"""The chat template."""

from __future__ import annotations

import pytest

from retnet.serving.chat_template import ChatTemplate


def test_chat_template_renders_and_closes():
    tpl = ChatTemplate()
    text = tpl.render([("system", "be brief"), ("user", "hi")])
    assert text == "<|system|>\nbe brief<|end|><|user|>\nhi<|end|><|assistant|>\n"
    assert tpl.closing(ended_turn=False) == "<|end|>" and tpl.closing(ended_turn=True) == ""


def test_chat_template_file_is_validated(tmp_path):
    (tmp_path / "chat_template.json").write_text('{"role_prefix": "no role here", "end_of_turn": "x"}')
    with pytest.raises(ValueError, match="role_prefix"):
        ChatTemplate.from_dir(tmp_path)
