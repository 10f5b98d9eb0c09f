import pytest
import torch

from retnet.data.batching import DataPosition, WindowSampler, encode_tensor, eval_windows, num_windows
from retnet.data.tokenizers import Tokenizer


def test_windows_are_slices_with_targets():
    tokens = torch.arange(1000, dtype=torch.int32)
    s = WindowSampler(tokens, seq_len=10, seed=0)
    batch = s.next_batch(8)
    assert batch.shape == (8, 11) and batch.dtype == torch.long
    assert torch.equal(batch[:, 1:] - batch[:, :-1], torch.ones(8, 10, dtype=torch.long))
    assert len({int(r[0]) for r in batch}) == 8


def test_one_epoch_visits_every_window_once_then_reshuffles():
    tokens = torch.arange(101, dtype=torch.int32)
    s = WindowSampler(tokens, seq_len=10, seed=3)
    first = s.next_batch(10)
    assert sorted(int(r[0]) for r in first) == list(range(0, 100, 10))
    assert s.position == DataPosition(0, 10)
    second = s.next_batch(3)
    assert s.position.epoch == 1 and s.position.cursor == 3
    assert second.shape == (3, 11)


@pytest.mark.parametrize("seed", [2**63 - 1, 2**64 - 1])
def test_every_seed_up_to_the_largest_torch_seed_works(seed):
    tokens = torch.arange(101, dtype=torch.int32)
    s = WindowSampler(tokens, seq_len=10, seed=seed)
    first, second = s.next_batch(10), s.next_batch(10)  # epochs 0 and 1
    assert sorted(int(r[0]) for r in first) == list(range(0, 100, 10)) and second.shape == (10, 11)


def test_resume_from_position_replays_the_same_stream():
    tokens = torch.randint(0, 50, (5000,), dtype=torch.int32)
    a = WindowSampler(tokens, seq_len=16, seed=7)
    a.next_batch(50)
    saved = DataPosition.from_dict(a.position.to_dict())
    expected = [a.next_batch(40) for _ in range(10)]  # crosses into later epochs
    b = WindowSampler(tokens, seq_len=16, seed=7, position=saved)
    assert all(torch.equal(x, b.next_batch(40)) for x in expected)
    c = WindowSampler(tokens, seq_len=16, seed=8, position=saved)
    assert not torch.equal(expected[0], c.next_batch(40))


def test_eval_windows_predict_every_token_once():
    tokens = torch.arange(95, dtype=torch.int32)
    batches = list(eval_windows(tokens, seq_len=10, batch_size=4))
    targets = torch.cat([b[:, 1:].reshape(-1) for b in batches])
    assert targets.tolist() == list(range(1, 91))
    assert len(list(eval_windows(tokens, seq_len=10, batch_size=4, max_batches=1))) == 1
    assert num_windows(95, 10) == 9


def test_too_few_tokens():
    with pytest.raises(ValueError, match="fewer than one sequence"):
        WindowSampler(torch.arange(10, dtype=torch.int32), seq_len=10, seed=0)
    with pytest.raises(ValueError, match="fewer than one sequence"):
        list(eval_windows(torch.arange(5, dtype=torch.int32), seq_len=10, batch_size=2))


def test_encode_tensor_matches_encode():
    text = "héllo wörld\n" * 10
    tok = Tokenizer.byte()
    assert encode_tensor(tok, text).tolist() == tok.encode(text)
    assert encode_tensor(tok, "").numel() == 0
