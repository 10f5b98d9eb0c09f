"""Auto classes load our directories; save/load round trips are exact; bad directories name the culprit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from retnet.hf import RetNetHFConfig, RetNetHFForCausalLM
from retnet.models import CheckpointError, ConfigError, RetNetForCausalLM
from tests.hf.helpers import model_dir, tiny_core

REPO = Path(__file__).resolve().parents[2]

AUTO_SCRIPT = """
import sys
{first}
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
{second}
d = sys.argv[1]
print(type(AutoConfig.from_pretrained(d)).__name__, type(AutoModelForCausalLM.from_pretrained(d)).__name__,
      type(AutoTokenizer.from_pretrained(d)).__name__, 'transformers_before_retnet' if {order} else '')
"""


def test_auto_classes_work_after_import_retnet_hf_in_either_order(model_path):
    """Fresh interpreters: `import retnet.hf` before or after transformers' Auto classes; `import retnet` alone
    stays free of transformers (the command line does not pay for it)."""
    first = AUTO_SCRIPT.format(
        first="import retnet\nassert 'transformers' not in sys.modules, 'import retnet imported transformers'\n"
        "import retnet.hf",
        second="",
        order=False,
    )
    second = AUTO_SCRIPT.format(
        first="import transformers.models.auto.modeling_auto", second="import retnet.hf", order=True
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(model_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for code in (first, second)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
        names = out.decode().split()
        assert names[:2] == ["RetNetHFConfig", "RetNetHFForCausalLM"], out
        assert names[2] in ("TokenizersBackend", "PreTrainedTokenizerFast"), out  # the class's name by release


def test_auto_classes_in_process(model_path):
    config = AutoConfig.from_pretrained(model_path)
    assert isinstance(config, RetNetHFConfig) and config.model_type == "retnet"
    assert config.num_hidden_layers == config.num_layers == 2
    model = AutoModelForCausalLM.from_pretrained(model_path)
    assert isinstance(model, RetNetHFForCausalLM)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    assert isinstance(tokenizer, PreTrainedTokenizerFast) and tokenizer.padding_side == "left"


def test_weights_and_logits_identical_across_both_libraries(tmp_path, model_path):
    core = RetNetForCausalLM.from_pretrained(model_path)
    hf = AutoModelForCausalLM.from_pretrained(model_path).eval()
    ids = torch.randint(0, core.config.vocab_size, (2, 19))
    ref = core(ids).logits
    assert torch.equal(hf(ids).logits, ref)

    hf.save_pretrained(tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text()) == core.config.to_dict()
    saved = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert saved.keys() == load_file(str(model_path / "model.safetensors")).keys()
    assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path / "hf")(ids).logits, ref)  # HF -> HF
    assert torch.equal(RetNetForCausalLM.from_pretrained(tmp_path / "hf")(ids).logits, ref)  # HF -> ours


def test_tied_embeddings_round_trip(tmp_path):
    core = tiny_core(50, tie_word_embeddings=True)
    model_dir(tmp_path / "tied", core)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "tied")
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    ids = torch.randint(0, 50, (1, 9))
    assert torch.equal(hf(ids).logits, core(ids).logits)
    hf.save_pretrained(tmp_path / "again")
    assert "lm_head.weight" not in load_file(str(tmp_path / "again" / "model.safetensors"))
    assert torch.equal(RetNetForCausalLM.from_pretrained(tmp_path / "again")(ids).logits, core(ids).logits)


def test_wrapping_shares_modules():
    core = tiny_core(40, gated=True)
    hf = RetNetHFForCausalLM.from_retnet(core)
    assert hf.model is core.model and hf.lm_head is core.lm_head
    assert hf.to_retnet().model is core.model
    ids = torch.randint(0, 40, (2, 7))
    assert torch.equal(hf(ids).logits, core(ids).logits)


def test_fresh_model_uses_our_initialisation():
    config = RetNetHFConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, value_dim=48, ffn_dim=64)
    hf = AutoModelForCausalLM.from_config(config)
    std = hf.model.embed_tokens.weight.std().item()
    assert abs(std - 32**-0.5) < 0.03  # official init: normal with std d^-0.5 (transformers' default is 0.02)
    q = hf.model.layers[0].retention.q_proj.weight
    bound = 2**-2.5 * (6 / (q.shape[0] + q.shape[1])) ** 0.5  # xavier-uniform with gain 2^-2.5
    assert q.abs().max().item() <= bound and q.abs().max().item() > 0.8 * bound


@pytest.mark.parametrize(
    "change, field",
    [
        ({"activation": "tanh"}, "activation"),
        ({"vocab_size": -3}, "vocab_size"),
        ({"hiden_size": 32}, "hiden_size"),
        ({"model_type": "llama"}, "model_type"),
    ],
)
def test_bad_config_names_the_field(tmp_path, model_path, change, field):
    bad = model_dir(tmp_path / "bad", RetNetForCausalLM.from_pretrained(model_path))
    data = json.loads((bad / "config.json").read_text())
    data.update(change)
    (bad / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=field):
        RetNetHFForCausalLM.from_pretrained(bad)
    if field != "model_type":  # the Auto classes dispatch on model_type: "llama" is not ours to check
        with pytest.raises(ValueError, match=field):
            AutoModelForCausalLM.from_pretrained(bad)
        with pytest.raises(ConfigError, match=field):
            AutoConfig.from_pretrained(bad)


@pytest.mark.parametrize("damage", ["missing", "unexpected", "shape"])
def test_bad_weights_name_the_tensor(tmp_path, model_path, damage):
    bad = model_dir(tmp_path / "bad", RetNetForCausalLM.from_pretrained(model_path))
    tensors = load_file(str(bad / "model.safetensors"))
    name = "model.layers.1.ffn.fc2.weight"
    if damage == "missing":
        del tensors[name]
    elif damage == "unexpected":
        name = "model.layers.2.ffn.fc2.weight"
        tensors[name] = torch.zeros(3)
    else:
        tensors[name] = tensors[name][:, :-1].contiguous()
    save_file(tensors, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"{damage}.*{name}|{name}.*shape"):
        AutoModelForCausalLM.from_pretrained(bad)


def test_missing_weights_file_is_named(tmp_path, model_path):
    bad = model_dir(tmp_path / "bad", RetNetForCausalLM.from_pretrained(model_path))
    (bad / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        AutoModelForCausalLM.from_pretrained(bad)


def test_config_file_is_read_with_a_size_limit(tmp_path, model_path):
    from retnet.models.directory import MAX_CONFIG_BYTES

    bad = model_dir(tmp_path / "bad", RetNetForCausalLM.from_pretrained(model_path))
    with open(bad / "config.json", "wb") as fh:
        fh.truncate(MAX_CONFIG_BYTES + 1)
    with pytest.raises(CheckpointError, match="config.json is too large"):
        RetNetHFConfig.from_pretrained(bad)
    with pytest.raises(CheckpointError, match="config.json is too large"):
        RetNetHFForCausalLM.from_pretrained(bad)
