"""One choice's text while its tokens arrive a chunk at a time: what may be sent now, and where a stop string ends it.

- A stop string is looked for in the decoded text (it may span tokens). The choice ends at the token that completes
  the first one: its text is what comes before the stop string, and `tokens` counts the tokens up to that token,
  none generated after it (what `usage.completion_tokens` reports).
- Text is released to a stream only once it can no longer change: the last (longest stop string - 1) characters
  wait, as they may begin a stop string, and so does a trailing U+FFFD (a character whose bytes are still coming).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"  # what a tokenizer decodes an incomplete UTF-8 sequence to


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest stop string begins in `text`, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


class ChoiceText:
    """Feed it the choice's tokens so far (`update`); it says what to send and when the choice is over."""

    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str]):
        self.decode, self.stops = decode, tuple(stops)
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.sent = ""  # text released so far
        self.text = ""  # the whole text once finished
        self.checked = 0  # tokens whose text holds no stop string
        self.finish_reason: str | None = None  # "stop" or "length" once finished; None while decoding or cancelled
        self.finished = False
        self.tokens = 0  # tokens the choice counts once finished

    def update(self, tokens: list[int], device_stopped: bool, eos: bool) -> str:
        """The text to send now. `device_stopped`: no more tokens will come (`eos`: an EOS id ended them)."""
        text = self.decode(tokens)
        cut = first_stop(text, self.stops)
        if cut is not None:
            completing = next(
                (k for k in range(self.checked + 1, len(tokens)) if first_stop(self.decode(tokens[:k]), self.stops)),
                len(tokens),
            )
            return self._finish(text[:cut], "stop", completing)
        self.checked = len(tokens)
        if device_stopped:
            return self._finish(text, "stop" if eos else "length", len(tokens))
        end = max(len(text) - self.hold, 0)
        while end and text[end - 1] == REPLACEMENT:
            end -= 1
        return self._release(text[:end])

    def cancel(self) -> None:
        self.finished = True

    def _finish(self, text: str, reason: str, tokens: int) -> str:
        self.finished, self.finish_reason, self.text, self.tokens = True, reason, text, tokens
        return self._release(text)

    def _release(self, text: str) -> str:
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta
