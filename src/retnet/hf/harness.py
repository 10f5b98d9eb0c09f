"""EleutherAI's lm-evaluation-harness on our model directories (``pip install 'retnet[eval]'``).

The harness's own ``HFLM`` loads them once ``import retnet.hf`` has registered the Auto classes; what it cannot
know is that our tokenizers have no special tokens (no end of text, no padding, no beginning of sequence).
:class:`RetNetLM` (``--model retnet``) is ``HFLM`` with those three filled in:

- the token a document is scored from (``prefix_token_id``, the harness's stand-in for a BOS token) is the last
  token of the blank line our corpora put between documents, the context a document start has in training;
- batches of ``generate_until`` are left-padded with the token of the NUL byte, which no text contains (padded
  positions are masked out; the harness's own fallback appends a token the model has no embedding for);
- without an end-of-text token, generation stops at the task's stop strings only.

``python -m retnet.hf.harness ...`` is the harness's command line (``lm_eval ...``) with RetNet registered, so
``--model retnet`` and ``--model hf`` both load our directories; :data:`TASKS_DIR` holds the bundled offline task
(``--include_path``). Importing this module imports ``lm_eval``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from retnet.data.corpus import DOCUMENT_SEPARATOR
from retnet.hf.registration import register

# The bundled tasks (a folder of lm-eval YAML files): pass it as --include_path.
TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
# The bundled task: bits per byte of the held-out Shakespeare speeches (retnet.data.passages).
SHAKESPEARE_TASK = "retnet_shakespeare"
PAD_TEXT = "\x00"


def bundled_tasks() -> list[str]:
    """The names of the tasks in :data:`TASKS_DIR` (one YAML file each, named after its task)."""
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def separator_token(tokenizer: Any) -> int:
    """The last token of the document separator: what precedes a document in our training stream."""
    ids = tokenizer.encode(DOCUMENT_SEPARATOR, add_special_tokens=False)
    if not ids:
        raise ValueError(f"the tokenizer encodes the document separator {DOCUMENT_SEPARATOR!r} as no token")
    return ids[-1]


def nul_token(tokenizer: Any) -> int:
    """The token of the NUL byte (a pad token that no text contains)."""
    ids = tokenizer.encode(PAD_TEXT, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(
            f"the tokenizer encodes the NUL byte as {ids}, not as one token: give it a pad token "
            "(retnet.hf.save_tokenizer(DIR, pad_token=...))"
        )
    return ids[0]


@register_model("retnet")
class RetNetLM(HFLM):
    """``HFLM`` for RetNet model directories (or a ``RetNetHFForCausalLM``) and their special-token-free tokenizers.

    Takes every ``HFLM`` argument. ``prefix_token_id`` defaults to the tokenizer's BOS/EOS when it has one, else to
    :func:`separator_token`. A tokenizer without pad, unk or EOS token gets the NUL byte's token as its pad token
    (the tokenizer object is changed in place, as ``HFLM`` does).
    """

    def __init__(self, pretrained: Any, backend: str = "causal", **kwargs: Any) -> None:
        register()
        super().__init__(pretrained=pretrained, backend=backend, **kwargs)
        tok = self.tokenizer
        if self.custom_prefix_token_id is None and tok.bos_token_id is None and tok.eos_token_id is None:
            self.custom_prefix_token_id = separator_token(tok)

    def _create_tokenizer(self, *args: Any, **kwargs: Any) -> None:
        super()._create_tokenizer(*args, **kwargs)
        tok = self.tokenizer
        if tok.pad_token_id is None and tok.unk_token_id is None and tok.eos_token_id is None:
            tok.pad_token_id = nul_token(tok)

    def tok_decode(self, tokens: Any, skip_special_tokens: bool = True) -> str | None:
        if tokens is None:  # no end-of-text token (eot_token_id is None): no extra stop string
            return None
        return super().tok_decode(tokens, skip_special_tokens=skip_special_tokens)


def main() -> None:
    """The harness's command line with RetNet registered (``python -m retnet.hf.harness --help``)."""
    from lm_eval.__main__ import cli_evaluate

    register()
    cli_evaluate()


if __name__ == "__main__":
    main()
