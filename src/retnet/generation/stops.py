"""Stop strings on streamed text: emit what cannot be the start of a stop string, cut at the first match."""

from __future__ import annotations


class StopMatcher:
    """Feed text deltas; get back the text safe to send. ``stopped`` turns true at the first stop string."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.text = ""
        self.sent = 0  # text[:sent] has been returned
        self.stopped = False
        self.matched: str | None = None  # the stop string found

    def push(self, delta: str) -> str:
        if self.stopped:
            return ""
        start = max(0, len(self.text) - max((len(s) for s in self.stops), default=0))
        self.text += delta
        hits = [(p, s) for s in self.stops if (p := self.text.find(s, start)) >= 0]
        if hits:
            cut, self.matched = min(hits)
            self.stopped = True
            out, self.sent = self.text[self.sent : max(cut, self.sent)], max(cut, self.sent)
            self.text = self.text[: self.sent]
            return out
        safe = len(self.text) - self._held_back()
        out, self.sent = self.text[self.sent : safe], max(self.sent, safe)
        return out

    def flush(self) -> str:
        """The held-back tail, once generation has ended without a stop string."""
        out, self.sent = self.text[self.sent :], len(self.text)
        return out

    def _held_back(self) -> int:
        """Length of the longest end of the text that begins some stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:n]):
                    best = n
                    break
        return best
