import io

import torch

from retnet.cli.chat_session import ChatSession
from retnet.cli.model_dir import load_model_dir

from .helpers import run_cli


def _probe_logits(model, state, probe):
    with torch.no_grad():
        return model(probe, state=state, use_cache=True).logits


def test_state_after_two_turns_equals_one_pass(trained_dir):
    model, tok = load_model_dir(trained_dir)
    model = model.double()
    session = ChatSession(model, tok, seed=3, max_new_tokens=15, stop=None)
    first = session.reply("Good morrow, cousin.")
    after_first = len(session.history)
    second = session.reply("What news from Verona?")
    assert first and second
    expected = (
        tok.encode("Good morrow, cousin.\n\n")
        + session.history[len(tok.encode("Good morrow, cousin.\n\n")) : after_first]
        + tok.encode("What news from Verona?\n\n")
    )
    assert session.history[: len(expected)] == expected
    assert len(session.history) == len(expected) + 15
    assert session.tokens_processed_last_turn == len(tok.encode("What news from Verona?\n\n")) + 15

    with torch.no_grad():
        one_pass = model(torch.tensor([session.history]), use_cache=True, mode="chunkwise").state
    probe = torch.tensor([tok.encode("ROMEO")])
    torch.testing.assert_close(
        _probe_logits(model, session.state, probe), _probe_logits(model, one_pass, probe), rtol=1e-9, atol=1e-9
    )
    assert int(session.state.offset[0]) == len(session.history)
    for a, b in zip(session.state.layers, one_pass.layers):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_stop_string_ends_the_reply_and_the_state_stays_complete(trained_dir):
    model, tok = load_model_dir(trained_dir)
    model = model.double()
    session = ChatSession(model, tok, seed=0, max_new_tokens=40, stop="e", temperature=1.0)
    reply = session.reply("Hark")
    assert "e" not in reply
    assert len(session.history) < len(tok.encode("Hark\n\n")) + 40  # stopped before max_new_tokens
    with torch.no_grad():
        one_pass = model(torch.tensor([session.history]), use_cache=True).state
    assert int(session.state.offset[0]) == len(session.history)
    for a, b in zip(session.state.layers, one_pass.layers):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_chat_command_answers_each_line(capsys, monkeypatch, trained_dir):
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello there\nWhat news?\n\n"))
    code, out, _ = run_cli(capsys, "chat", trained_dir, "--max-tokens", "10", "--seed", "1", "--stop", "")
    assert code == 0
    assert out.count("\n") >= 2


class _Scripted(torch.nn.Module):
    """A real model whose next-token logits are replaced so that greedy decoding emits ``script`` in order."""

    def __init__(self, model: torch.nn.Module, script: list[int]) -> None:
        super().__init__()
        self.inner, self.script, self.step = model, script, 0

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        forced = torch.full_like(out.logits[:, -1:], -1e4)
        forced[..., self.script[min(self.step, len(self.script) - 1)]] = 0.0
        self.step += 1
        out.logits = torch.cat([out.logits[:, :-1], forced], dim=1)
        return out


def test_a_stop_string_split_across_tokens_never_leaks():
    """The default stop "\\n\\n" arriving as two "\\n" tokens: the first newline is held back, never shown."""
    from retnet.data.tokenizers import Tokenizer
    from retnet.models import RetNetConfig, RetNetForCausalLM

    tok = Tokenizer.byte()
    inner = RetNetForCausalLM(RetNetConfig(vocab_size=256, hidden_size=32, num_layers=1, num_heads=2)).eval()
    script = [ord(c) for c in "ab\n\ncd"]
    session = ChatSession(_Scripted(inner, script), tok, temperature=0, max_new_tokens=6, stop="\n\n")
    pieces = list(session.turn("hi"))
    assert "".join(pieces) == "ab" and all("\n" not in p for p in pieces)
    # a lone newline that does not complete the stop string is released, in order
    session = ChatSession(_Scripted(inner, [ord(c) for c in "a\nb"]), tok, temperature=0, max_new_tokens=3)
    assert session.reply("hi") == "a\nb"
