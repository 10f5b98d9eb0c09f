"""Corpora, tokenizers and batching for training and evaluation."""

from retnet.data.batching import DataPosition, WindowSampler, eval_windows
from retnet.data.corpus import Corpus, CorpusError, load_corpus, split_corpus
from retnet.data.tokenizers import Tokenizer

__all__ = [
    "Corpus",
    "CorpusError",
    "DataPosition",
    "Tokenizer",
    "WindowSampler",
    "eval_windows",
    "load_corpus",
    "split_corpus",
]
