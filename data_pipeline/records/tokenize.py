"""Pair records -> token rows with the scored span marked (docs/algorithms.md §1, "Tokenisation").

For each sequence of a pair: the prompt conversation is rendered with the generation prompt, the full conversation
(prompt + the final assistant turn) is rendered, both are encoded with `add_special_tokens=False`, and the response
ids are `full[len(prompt):]`. Checked per row, each failure a `DataError` naming file, line and field:
- the prompt ids are a prefix of the full ids (TRL only warns; a boundary merge would score a different context),
- BOS occurs exactly once, first (when the tokenizer has one; it comes from the chat template); when the BOS
  token is the one that opens every turn (ChatML's `<|im_start|>`, SmolLM2's BOS), it is first and not doubled,
- the end-of-turn token is inside the response span, so it is scored (mask never derived from `id != pad`),
- no message contains the text of a special token (the tokenizer would turn it into that token).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_pipeline.errors import DataFileError, UserError
from data_pipeline.files import ASSETS_DIR, read_utf8
from data_pipeline.pairs.schema import DataError, Message, PairRecord
from data_pipeline.records.truncation import TruncatedGroup, TruncationSettings, truncate_group

DEFAULT_CHAT_TEMPLATE = ASSETS_DIR / "chat_templates" / "llama3.jinja"
DEFAULT_TOKENIZER_DIR = ASSETS_DIR / "tokenizers" / "llama2-sp-32k"
# End-of-turn tokens of known chat formats; a tokenizer without any of them ends turns with its EOS.
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>")
# Turn-opening tokens of known chat formats. A tokenizer whose BOS is one of them (SmolLM2: bos_token
# "<|im_start|>") has one BOS per turn by design, so "exactly one BOS" becomes "BOS first, not doubled".
TURN_START_TOKENS = ("<|im_start|>",)


class TokenizerError(UserError, ValueError):
    """A tokenizer folder or chat template that cannot be used."""


def load_tokenizer(path: str | Path):
    """A local HF tokenizer folder (no hub access). transformers is imported here, not at module import."""
    import transformers

    path = Path(path)
    if not path.is_dir():
        raise DataFileError(f"{path}: tokenizer folder not found")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        reason = " ".join(str(e).split())[:300]
        raise TokenizerError(f"{path}: not a tokenizer folder transformers can load ({reason})") from e
    if tokenizer.eos_token_id is None:
        raise TokenizerError(f"{path}: tokenizer has no eos_token; rpo-jax needs it to end a turn or pad")
    return tokenizer


def resolve_chat_template(tokenizer, template_path: str | Path | None) -> tuple[str, str]:
    """(template text, where it came from): an explicit file, else the tokenizer's own, else llama3.jinja."""
    if template_path is not None:
        path = Path(template_path)
        if not path.is_file():
            raise DataFileError(f"{path}: chat template file not found")
        return read_utf8(path), str(path)
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, str) and own:
        return own, "tokenizer"
    if own:  # a dict of named templates (transformers allows it): ambiguous which one training should use
        raise TokenizerError("tokenizer has several named chat templates; pass --chat-template FILE")
    return DEFAULT_CHAT_TEMPLATE.read_text(encoding="utf-8"), f"rpo-jax:{DEFAULT_CHAT_TEMPLATE.name}"


def end_of_turn_id(tokenizer) -> int:
    vocab = tokenizer.get_vocab()
    for token in END_OF_TURN_TOKENS:
        if token in vocab:
            return int(vocab[token])
    return int(tokenizer.eos_token_id)


@dataclass(frozen=True)
class TokenizedExample:
    """One pair as G token rows; row g = prompt_g + response_g, scored from `response_starts[g]` to its end."""

    example_id: str
    recipe: str
    margin: int
    rows: tuple[np.ndarray, ...]  # int32, one per sequence
    response_starts: tuple[int, ...]
    prompt_cut: bool
    response_cut: bool

    @property
    def truncated(self) -> bool:
        return self.prompt_cut or self.response_cut


@dataclass(frozen=True)
class Dropped:
    """A valid pair the truncation policy removed."""

    reason: str


class PairTokenizer:
    """Tokenizes `PairRecord`s with one tokenizer, chat template and truncation policy."""

    def __init__(self, tokenizer, chat_template: str, truncation: TruncationSettings):
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.truncation = truncation
        self.bos_token_id = tokenizer.bos_token_id
        self.bos_opens_turns = tokenizer.bos_token in TURN_START_TOKENS
        self.end_of_turn_id = end_of_turn_id(tokenizer)
        specials = sorted({t.content for t in tokenizer.added_tokens_decoder.values() if t.special}, key=len)
        self._special_text = re.compile("|".join(re.escape(s) for s in reversed(specials))) if specials else None

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def tokenize(self, record: PairRecord, source: str, line: int) -> TokenizedExample | Dropped:
        """Raises `DataError` (reason `bad_prefix`, `bos_count`, `no_end_of_turn`, `special_token_in_text`)."""
        self._check_special_text(record, source, line)
        prompts, responses = [], []
        prompt_cache: dict[tuple[Message, ...], list[int]] = {}
        for index, sequence in enumerate(record.sequences):
            field = f"sequences[{index}]"
            messages = [m.to_json() for m in sequence.messages]
            if sequence.messages not in prompt_cache:
                prompt_cache[sequence.messages] = self.encode_text(self.render(messages, True))
            prompt_ids = prompt_cache[sequence.messages]
            full_text = self.render([*messages, {"role": "assistant", "content": sequence.response}], False)
            full_ids = self.encode_text(full_text)
            self._check_row(prompt_ids, full_ids, source, line, field)
            prompts.append(prompt_ids)
            responses.append(full_ids[len(prompt_ids) :])
        group = truncate_group(prompts, responses, self.truncation, self.bos_token_id)
        if isinstance(group, str):
            return Dropped(group)
        return _to_example(record, group)

    def _check_special_text(self, record: PairRecord, source: str, line: int) -> None:
        if self._special_text is None:
            return
        for index, sequence in enumerate(record.sequences):
            texts = [(f"messages[{j}].content", m.content) for j, m in enumerate(sequence.messages)]
            for name, text in [*texts, ("response", sequence.response)]:
                found = self._special_text.search(text)
                if found:
                    raise DataError(
                        source,
                        line,
                        f"sequences[{index}].{name}",
                        f"contains special token text {found.group()!r}; the tokenizer would encode it as that token",
                        reason="special_token_in_text",
                    )

    def _check_row(self, prompt_ids: list[int], full_ids: list[int], source: str, line: int, field: str) -> None:
        if full_ids[: len(prompt_ids)] != prompt_ids:
            diverge = _first_difference(prompt_ids, full_ids)
            raise DataError(
                source,
                line,
                field,
                f"tokenized prompt is not a prefix of the tokenized conversation (diverges at token "
                f"{diverge}: prompt has {self.tokenizer.decode(prompt_ids[diverge : diverge + 8])!r}, "
                f"conversation has {self.tokenizer.decode(full_ids[diverge : diverge + 8])!r}); fix the "
                "chat template or end the prompt on a token boundary",
                reason="bad_prefix",
            )
        if len(full_ids) == len(prompt_ids):
            raise DataError(source, line, f"{field}.response", "renders to no tokens", reason="empty_response")
        if self.bos_token_id is not None:
            count = full_ids.count(self.bos_token_id)
            if self.bos_opens_turns:
                if full_ids[0] != self.bos_token_id or full_ids[1:2] == [self.bos_token_id]:
                    raise DataError(
                        source,
                        line,
                        field,
                        f"expected the BOS / turn-start token (id "
                        f"{self.bos_token_id}) first and not doubled, got {full_ids[:2]}; the chat "
                        "template must open each turn with it once",
                        reason="bos_count",
                    )
            elif count != 1 or full_ids[0] != self.bos_token_id:
                raise DataError(
                    source,
                    line,
                    field,
                    f"expected exactly one BOS (id {self.bos_token_id}) at the "
                    f"start, found {count} (first id {full_ids[0]}); the chat template must add it once",
                    reason="bos_count",
                )
        if self.end_of_turn_id not in full_ids[len(prompt_ids) :]:
            raise DataError(
                source,
                line,
                f"{field}.response",
                f"end-of-turn token id {self.end_of_turn_id} is "
                "not in the response span; the chat template must close the assistant turn",
                reason="no_end_of_turn",
            )


def _first_difference(a: list[int], b: list[int]) -> int:
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return min(len(a), len(b))


def _to_example(record: PairRecord, group: TruncatedGroup) -> TokenizedExample:
    rows = tuple(np.asarray(p + r, dtype=np.int32) for p, r in zip(group.prompts, group.responses, strict=True))
    starts = tuple(len(p) for p in group.prompts)
    return TokenizedExample(record.id, record.recipe, record.margin, rows, starts, group.prompt_cut, group.response_cut)
