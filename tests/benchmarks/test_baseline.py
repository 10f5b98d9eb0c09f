"""The Llama baseline is the real ``transformers`` model, matched to RetNet's parameter count."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retnet_benchmarks.baseline import (
    DECODE_100M,
    TRAIN_25M,
    build_llama,
    build_pair,
    build_retnet,
    count_parameters,
    count_parameters_of_config,
    llama_num_parameters,
)
from retnet_benchmarks.bench_decode import llama_cache_bytes


@pytest.mark.parametrize(
    "kwargs", [TRAIN_25M, dict(vocab_size=97, hidden_size=32, num_layers=2, num_heads=2, value_dim=48, ffn_dim=64)]
)
def test_built_models_have_equal_parameter_counts(kwargs):
    rcfg, lcfg = build_pair(kwargs)
    llama, retnet = build_llama(lcfg), build_retnet(rcfg)
    assert type(llama).__name__ == "LlamaForCausalLM"
    assert llama.config._attn_implementation == "sdpa"
    n_l, n_r = count_parameters(llama), count_parameters(retnet)
    assert n_l == count_parameters_of_config(lcfg)
    assert abs(n_l - n_r) / n_r < 0.05
    assert (lcfg.hidden_size, lcfg.num_hidden_layers, lcfg.vocab_size) == (
        rcfg.hidden_size,
        rcfg.num_layers,
        rcfg.vocab_size,
    )


def test_benchmark_sizes_are_matched():
    rcfg, lcfg = build_pair(TRAIN_25M)
    assert abs(count_parameters_of_config(lcfg) - rcfg.num_parameters()) / rcfg.num_parameters() < 0.01
    rcfg, lcfg = build_pair(DECODE_100M)
    assert 90e6 < rcfg.num_parameters() < 110e6
    assert abs(count_parameters_of_config(lcfg) - rcfg.num_parameters()) / rcfg.num_parameters() < 0.01
    # 12 layers x (K and V) x 768 floats x 4 bytes per token per row
    assert llama_cache_bytes(lcfg, 8, 8192) == 12 * 2 * 768 * 4 * 8 * 8192


@given(
    d_mult=st.integers(1, 4),
    layers=st.integers(1, 4),
    heads=st.sampled_from([1, 2, 4]),
    vocab=st.integers(16, 300),
    tied=st.booleans(),
)
def test_matching_holds_across_shapes(d_mult, layers, heads, vocab, tied):
    d = 32 * d_mult
    rcfg, lcfg = build_pair(
        dict(
            vocab_size=vocab,
            hidden_size=d,
            num_layers=layers,
            num_heads=heads,
            value_dim=2 * d,
            ffn_dim=2 * d,
            tie_word_embeddings=tied,
        )
    )
    n_l = llama_num_parameters(vocab, d, layers, lcfg.intermediate_size, d, tied)
    assert abs(n_l - rcfg.num_parameters()) / rcfg.num_parameters() < 0.05
