import pytest

from retnet.training import trainer


@pytest.mark.parametrize(
    ("load", "processes", "expected"), [(0.0, 1, 4), (0.4, 1, 4), (1.0, 1, 3), (2.6, 1, 1), (40.0, 1, 1), (0.0, 2, 2)]
)
def test_threads_follow_free_cores(monkeypatch, load, processes, expected):
    monkeypatch.setattr(trainer.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(trainer.os, "getloadavg", lambda: (load * processes, 0.0, 0.0))
    assert trainer.pick_threads(0, processes) == expected
    assert trainer.pick_threads(3, processes) == 3
