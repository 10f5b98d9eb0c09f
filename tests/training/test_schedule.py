import pytest
import torch

from retnet.training.schedule import lr_factor, warmup_cosine


def test_warmup_then_cosine_to_floor():
    kw = {"warmup_steps": 10, "total_steps": 110, "min_lr_ratio": 0.1}
    assert lr_factor(0, **kw) == pytest.approx(0.1)
    assert lr_factor(9, **kw) == pytest.approx(1.0)
    assert lr_factor(10, **kw) == pytest.approx(1.0)
    assert lr_factor(60, **kw) == pytest.approx(0.55)
    assert lr_factor(110, **kw) == pytest.approx(0.1)
    assert lr_factor(500, **kw) == pytest.approx(0.1)
    values = [lr_factor(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_scheduler_drives_the_optimizer_and_state_is_plain():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=20, min_lr_ratio=0.0)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[-1] < 0.01
    state = sched.state_dict()
    assert all(isinstance(v, (int, float, list, bool, type(None))) for v in state.values())
    with pytest.raises(ValueError, match="total_steps"):
        warmup_cosine(opt, warmup_steps=0, total_steps=0)
