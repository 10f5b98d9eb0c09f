"""The dataset of the bundled ``retnet_shakespeare`` task, built offline from the embedded corpus."""

from __future__ import annotations

from typing import Any


def load(**_metadata: Any) -> dict[str, Any]:
    """``{"test": Dataset}`` of the held-out speeches, one ``{"text": speech}`` row each.

    The harness passes the run's metadata (model arguments and the like) as keyword arguments; none applies.
    """
    import datasets

    from retnet.data.passages import heldout_speeches

    return {"test": datasets.Dataset.from_list([{"text": s} for s in heldout_speeches()], split="test")}
