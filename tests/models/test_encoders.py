"""The bidirectional text encoder and the 2-D vision model: form equivalence, padding, training, save/load."""

from __future__ import annotations

import pytest
import torch

from retnet.models import CheckpointError
from retnet.models.baselines import TransformerTextClassifier, ViTClassifier
from retnet.models.encoder import (
    EncoderConfig,
    RetNetForImageClassification,
    RetNetForSequenceClassification,
    load_encoder,
    save_encoder,
)
from tests.models.helpers import rel_err

TEXT = dict(
    kind="text", num_labels=3, hidden_size=32, num_layers=2, num_heads=4, value_dim=32, ffn_dim=48, chunk_size=8
)
VISION = dict(
    kind="vision",
    num_labels=4,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    value_dim=32,
    ffn_dim=48,
    image_size=8,
    patch_size=2,
)


def test_text_encoder_forms_agree_and_padding_equals_alone():
    torch.manual_seed(0)
    model = RetNetForSequenceClassification(EncoderConfig(**TEXT, dropout=0.0)).double().eval()
    ids = torch.randint(0, 256, (2, 37))
    ref = model(ids, mode="parallel").logits
    for mode in ("chunkwise", "recurrent"):
        assert rel_err(model(ids, mode=mode).logits, ref) < 1e-9
    mask = torch.ones(2, 37, dtype=torch.long)
    mask[1, :10] = 0
    padded = model(ids, attention_mask=mask, mode="chunkwise").logits
    alone = model(ids[1:, 10:], mode="parallel").logits
    assert rel_err(padded[1:], alone) < 1e-9


def test_vision_model_forms_agree():
    torch.manual_seed(0)
    model = RetNetForImageClassification(EncoderConfig(**VISION, dropout=0.0)).double().eval()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    ref = model(x, mode="parallel").logits
    assert rel_err(model(x, mode="separable").logits, ref) < 1e-10
    with pytest.raises(ValueError, match=r"pixel_values must have shape \[B, 1, 8, 8\]"):
        model(torch.rand(3, 1, 7, 8, dtype=torch.float64))


@pytest.mark.parametrize(
    "make, inputs",
    [
        (
            lambda: RetNetForSequenceClassification(EncoderConfig(**TEXT, dropout=0.0)),
            lambda: torch.randint(0, 256, (16, 24)),
        ),
        (
            lambda: TransformerTextClassifier(EncoderConfig(**TEXT, dropout=0.0)),
            lambda: torch.randint(0, 256, (16, 24)),
        ),
        (lambda: RetNetForImageClassification(EncoderConfig(**VISION, dropout=0.0)), lambda: torch.rand(16, 1, 8, 8)),
        (lambda: ViTClassifier(EncoderConfig(**VISION, dropout=0.0)), lambda: torch.rand(16, 1, 8, 8)),
    ],
)
def test_models_train_loss_decreases(make, inputs):
    torch.manual_seed(0)
    model = make()
    x = inputs()
    y = torch.randint(0, model.config.num_labels, (16,))
    key = "input_ids" if model.config.kind == "text" else "pixel_values"
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = model(**{key: x}, labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0]


def test_save_load_round_trip_and_errors(tmp_path):
    model = RetNetForImageClassification(EncoderConfig(**VISION)).eval()
    save_encoder(model, tmp_path / "m")
    loaded = load_encoder(tmp_path / "m")
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(model(x).logits, loaded(x).logits)
    (tmp_path / "m" / "config.json").write_text('{"model_type": "retnet-encoder", "kind": "audio"}')
    with pytest.raises(CheckpointError, match="kind must be 'text' or 'vision'"):
        load_encoder(tmp_path / "m")
    with pytest.raises(CheckpointError, match="config file not found"):
        load_encoder(tmp_path / "nothing")
