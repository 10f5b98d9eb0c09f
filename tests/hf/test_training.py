"""``Trainer`` trains the model; a PEFT LoRA adapter on retention and FFN projections trains, saves and reloads."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from retnet.hf import RetNetHFForCausalLM
from tests.hf.helpers import TEXT, tiny_core

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "g_proj", "out_proj", "fc1", "gate", "fc2"]


def lm_dataset(tokenizer, block: int = 32) -> list[dict[str, torch.Tensor]]:
    ids = tokenizer(TEXT)["input_ids"]
    return [
        {"input_ids": torch.tensor(ids[i : i + block]), "labels": torch.tensor(ids[i : i + block])}
        for i in range(0, len(ids) - block, block)
    ]


def train(model, dataset, out_dir, steps: int = 10, lr: float = 3e-3, **extra) -> list[float]:
    args = TrainingArguments(
        output_dir=str(out_dir),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=lr,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        **extra,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_trainer_runs_10_steps_and_the_loss_decreases(tmp_path, model_path):
    model = AutoModelForCausalLM.from_pretrained(model_path)
    losses = train(model, lm_dataset(AutoTokenizer.from_pretrained(model_path)), tmp_path)
    assert len(losses) == 10
    assert losses[-1] < 0.75 * losses[0]


def test_trainer_gradient_checkpointing_gives_the_same_losses(tmp_path, model_path):
    dataset = lm_dataset(AutoTokenizer.from_pretrained(model_path))
    plain = train(AutoModelForCausalLM.from_pretrained(model_path), dataset, tmp_path / "a", steps=4)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    checkpointed = train(model, dataset, tmp_path / "b", steps=4, gradient_checkpointing=True)
    assert model.model.gradient_checkpointing
    assert checkpointed == pytest.approx(plain, rel=1e-6, abs=0)
    model.gradient_checkpointing_disable()
    assert not model.model.gradient_checkpointing


def test_gradient_checkpointing_enable_recomputes_blocks():
    hf = RetNetHFForCausalLM.from_retnet(tiny_core(40)).train()
    calls = []
    for layer in hf.model.layers:
        layer.register_forward_pre_hook(lambda *_: calls.append(1))
    hf.gradient_checkpointing_enable()
    assert hf.model.gradient_checkpointing
    ids = torch.randint(0, 40, (2, 12))
    hf(input_ids=ids, labels=ids).loss.backward()
    assert len(calls) == 2 * len(hf.model.layers)


def test_loss_equals_our_loss_with_padding():
    core = tiny_core(40, dtype=torch.float64)
    hf = RetNetHFForCausalLM.from_retnet(core)
    ids = torch.randint(0, 40, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # right padding, as a collator makes for training
    ours = core(ids, labels=ids, attention_mask=mask).loss
    theirs = hf(input_ids=ids, labels=ids, attention_mask=mask).loss
    # transformers' loss_function computes in float32 whatever the model dtype
    torch.testing.assert_close(theirs.double(), ours, rtol=1e-6, atol=0)


def test_lora_adapter_trains_saves_and_reloads(tmp_path, model_path):
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    base = AutoModelForCausalLM.from_pretrained(model_path)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"))
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    wrapped = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert wrapped == set(LORA_TARGETS)
    frozen_before = {n: p.detach().clone() for n, p in lora.named_parameters() if not p.requires_grad}

    losses = train(lora, lm_dataset(tokenizer), tmp_path / "run", lr=1e-2)
    assert losses[-1] < losses[0]
    assert all(torch.equal(p, frozen_before[n]) for n, p in lora.named_parameters() if not p.requires_grad)

    lora.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    ids = torch.tensor([tokenizer("To be, or not to be")["input_ids"]])
    lora.eval()
    with torch.no_grad():
        trained = lora(input_ids=ids).logits
        fresh_base = AutoModelForCausalLM.from_pretrained(model_path).eval()
        plain = fresh_base(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(fresh_base, tmp_path / "adapter").eval()
        assert torch.equal(reloaded(input_ids=ids).logits, trained)
    assert (trained - plain).abs().max() > 1e-3  # the adapter changed the model
    greedy = reloaded.generate(input_ids=ids, max_new_tokens=6, do_sample=False)
    assert greedy.tolist() == lora.generate(input_ids=ids, max_new_tokens=6, do_sample=False).tolist()
