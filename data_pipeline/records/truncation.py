"""Truncation policies for a group of (prompt, response) token rows; see docs/algorithms.md §1 "Truncation".

Any cut can flip a preference label (constraints sit in the prompt, checkers read the whole response), so the default
is `drop`. A group (G rows of one example) is always treated as a unit: it is kept, cut with the same rule for every
row, or dropped as a whole.

- `drop` (default): drop the group if any row is longer than `max_length`.
- `keep_start` (TRL v1.x `truncation_mode="keep_start"`): keep the first `max_length` tokens of every row, i.e. cut
  the response tail; groups whose prompt alone is >= `max_length` are dropped (TRL filters them too).
- `split` (TRL <= 0.28 `tokenize_row`): if prompt + longest response exceeds `max_length`, cut every prompt longer
  than `max_prompt_length` from the left (BOS kept); if still too long, cut every response to
  `max_length - max_prompt_length` from the right. The same caps apply to all rows of the group ("equal cuts").
"""

from __future__ import annotations

from dataclasses import dataclass

TRUNCATION_MODES = ("drop", "keep_start", "split")

# Reasons a group is dropped by the policy (manifest `counts.dropped`).
DROP_PROMPT_TOO_LONG = "prompt_too_long"
DROP_SEQUENCE_TOO_LONG = "sequence_too_long"


@dataclass(frozen=True)
class TruncationSettings:
    max_length: int
    mode: str = "drop"
    max_prompt_length: int | None = None  # `split` only; None means max_length // 2 (TRL's 512 of 1024)

    def __post_init__(self):
        if self.mode not in TRUNCATION_MODES:
            raise ValueError(f"truncation must be one of {TRUNCATION_MODES}, got {self.mode!r}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        if self.max_prompt_length is not None:
            if self.mode != "split":
                raise ValueError("max_prompt_length is only used by truncation='split'")
            if not 2 <= self.max_prompt_length < self.max_length:
                raise ValueError(f"max_prompt_length must be in [2, max_length), got {self.max_prompt_length}")

    @property
    def prompt_budget(self) -> int:
        return self.max_prompt_length if self.max_prompt_length is not None else self.max_length // 2

    def to_json(self) -> dict:
        out = {"max_length": self.max_length, "truncation": self.mode}
        if self.mode == "split":
            out["max_prompt_length"] = self.prompt_budget
        return out


@dataclass(frozen=True)
class TruncatedGroup:
    """Rows after the policy; `prompt_cut` / `response_cut` say whether any row lost tokens there."""

    prompts: tuple[tuple[int, ...], ...]
    responses: tuple[tuple[int, ...], ...]
    prompt_cut: bool
    response_cut: bool


def truncate_group(
    prompts: list[list[int]], responses: list[list[int]], settings: TruncationSettings, bos_token_id: int | None
) -> TruncatedGroup | str:
    """Applies the policy to G rows (prompts[g] + responses[g]); returns the kept rows or a drop reason."""
    max_length = settings.max_length
    if settings.mode in ("drop", "keep_start") and any(len(p) >= max_length for p in prompts):
        return DROP_PROMPT_TOO_LONG
    too_long = any(len(p) + len(r) > max_length for p, r in zip(prompts, responses, strict=True))
    if not too_long:
        return TruncatedGroup(tuple(map(tuple, prompts)), tuple(map(tuple, responses)), False, False)
    if settings.mode == "drop":
        return DROP_SEQUENCE_TOO_LONG
    if settings.mode == "keep_start":
        # prompt < max_length was checked above, so every row keeps >= 1 response token.
        cut_responses = [r[: max_length - len(p)] for p, r in zip(prompts, responses, strict=True)]
        return TruncatedGroup(tuple(map(tuple, prompts)), tuple(map(tuple, cut_responses)), False, True)
    return _split(prompts, responses, settings, bos_token_id)


def _split(
    prompts: list[list[int]], responses: list[list[int]], settings: TruncationSettings, bos_token_id: int | None
) -> TruncatedGroup:
    max_length, budget = settings.max_length, settings.prompt_budget
    longest_response = max(len(r) for r in responses)
    prompt_cut = response_cut = False
    if any(len(p) + longest_response > max_length for p in prompts):
        new_prompts = []
        for p in prompts:
            if len(p) > budget:
                prompt_cut = True
                # Left cut (TRL keep_end on the prompt), BOS kept first: docs/algorithms.md §1 wants exactly one BOS.
                keeps_bos = bos_token_id is not None and p and p[0] == bos_token_id
                p = [p[0], *p[len(p) - budget + 1 :]] if keeps_bos else p[len(p) - budget :]
            new_prompts.append(p)
        prompts = new_prompts
    if any(len(p) + longest_response > max_length for p in prompts):
        cap = max_length - budget
        response_cut = any(len(r) > cap for r in responses)
        responses = [r[:cap] for r in responses]
    return TruncatedGroup(tuple(map(tuple, prompts)), tuple(map(tuple, responses)), prompt_cut, response_cut)
