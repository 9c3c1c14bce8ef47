"""Import ready-made preference data into pair records.

Formats (`--format`, or `auto` from the first row and the recipe):
- `trl`: TRL preference rows `prompt` / `chosen` / `rejected`, each a string ("standard": the prompt is one user
  turn) or a message list ("conversational"); without `prompt`, chosen/rejected are full conversations whose
  common prefix is the prompt ("implicit prompt").
- `sharegpt`: LLaMA-Factory `conversations` (`from`: system/human/gpt) + `chosen` / `rejected` {from, value},
  optional `system` column.
- `hh-rlhf`: Anthropic HH rows, two full dialogues split at the last "\\n\\nAssistant:"; rows whose prefixes differ
  are dropped (`prefix_mismatch`).
- `iopo-sharegpt`: IOPO's own data (`IOPO/data/trace.json`): `conversations` = [x1, x2] (two human turns),
  `chosen` = y1 (fits x1), `rejected` = y2 (fits x2) → G=4 in the order (x1,y1) (x1,y2) (x2,y2) (x2,y1).

The rows come from JSON / JSONL, a Parquet file or a Hugging Face `datasets` folder (`save_to_disk`;
`table_rows`). A row with a pair of scores (`SCORE_FIELDS`) whose chosen response does not score higher is dropped
and counted (`ties`, `chosen_scored_lower`), never trained as a preference; the scores of the others go to the
provenance.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

from data_pipeline.errors import UserError
from data_pipeline.pairs.readers import BadRows, guard, iter_json_rows, unparsed_count
from data_pipeline.pairs.schema import DataError, Message, PairRecord, Sequence, validate_prompt_messages
from data_pipeline.pairs.stats import BuildStats
from data_pipeline.pairs.table_rows import is_table_input, iter_table_rows

FORMATS = ("trl", "sharegpt", "hh-rlhf", "iopo-sharegpt")
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}
HH_ASSISTANT = "\n\nAssistant:"
# (chosen, rejected) score columns: TRL / UltraFeedback-binarized, the reverse order, Argilla's ratings (two spellings).
SCORE_FIELDS = (
    ("score_chosen", "score_rejected"),
    ("chosen_score", "rejected_score"),
    ("chosen_rating", "rejected_rating"),
    ("chosen-rating", "rejected-rating"),
)
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


class DroppedRow(Exception):
    """A well-formed row that the format says to skip; `reason` is its stats key."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def detect_format(row: Any, recipe: str, source: str, line: int) -> str:
    if isinstance(row, dict) and "conversations" in row:
        return "iopo-sharegpt" if recipe == "iopo" else "sharegpt"
    if isinstance(row, dict) and "chosen" in row:
        if "prompt" in row or isinstance(row["chosen"], list):
            return "trl"
        if isinstance(row["chosen"], str) and row["chosen"].startswith("\n\nHuman:"):
            return "hh-rlhf"
    raise DataError(
        source, line, "<row>", f"cannot detect the format (pass --format one of {FORMATS})", reason="unknown_format"
    )


def _text(value: Any, source: str, line: int, name: str) -> str:
    if not isinstance(value, str):
        raise DataError(source, line, name, f"must be a string, got {value!r:.80}")
    if not value.strip():
        raise DataError(source, line, name, "is empty", reason="empty_response")
    return value


def _messages(raw: Any, source: str, line: int, name: str) -> tuple[Message, ...]:
    if not isinstance(raw, list):
        raise DataError(source, line, name, f"must be a list of messages, got {raw!r:.80}")
    return tuple(Message.from_json(m, source, line, f"{name}[{i}].") for i, m in enumerate(raw))


def _single_reply(raw: Any, source: str, line: int, name: str) -> str:
    if isinstance(raw, str):
        return _text(raw, source, line, name)
    messages = _messages(raw, source, line, name)
    if len(messages) != 1 or messages[0].role != "assistant":
        raise DataError(source, line, name, "must be one assistant message when 'prompt' is given")
    return _text(messages[0].content, source, line, f"{name}[0].content")


def parse_trl(row: Any, source: str, line: int) -> tuple[tuple[Message, ...], str, str]:
    if not isinstance(row, dict) or "chosen" not in row or "rejected" not in row:
        raise DataError(source, line, "chosen/rejected", "missing", reason="missing_field")
    if "prompt" in row:
        prompt = row["prompt"]
        messages = (
            (Message("user", _text(prompt, source, line, "prompt")),)
            if isinstance(prompt, str)
            else _messages(prompt, source, line, "prompt")
        )
        chosen = _single_reply(row["chosen"], source, line, "chosen")
        rejected = _single_reply(row["rejected"], source, line, "rejected")
    else:
        full_c = _messages(row["chosen"], source, line, "chosen")
        full_r = _messages(row["rejected"], source, line, "rejected")
        for name, full in (("chosen", full_c), ("rejected", full_r)):
            if not full or full[-1].role != "assistant":
                raise DataError(source, line, name, "must end with an assistant message")
        if full_c[:-1] != full_r[:-1]:
            raise DroppedRow("prefix_mismatch")
        messages = full_c[:-1]
        chosen = _text(full_c[-1].content, source, line, "chosen[-1].content")
        rejected = _text(full_r[-1].content, source, line, "rejected[-1].content")
    validate_prompt_messages(messages, source, line, "prompt")
    return messages, chosen, rejected


def _sharegpt_turns(row: Any, source: str, line: int) -> tuple[Message, ...]:
    if not isinstance(row, dict) or not isinstance(row.get("conversations"), list):
        raise DataError(source, line, "conversations", "missing or not a list", reason="missing_field")
    messages = []
    if row.get("system"):
        messages.append(Message("system", _text(row["system"], source, line, "system")))
    for i, turn in enumerate(row["conversations"]):
        if not isinstance(turn, dict) or turn.get("from") not in SHAREGPT_ROLES:
            raise DataError(
                source, line, f"conversations[{i}].from", f"must be one of {sorted(SHAREGPT_ROLES)}, got {turn!r:.80}"
            )
        messages.append(
            Message(SHAREGPT_ROLES[turn["from"]], _text(turn.get("value"), source, line, f"conversations[{i}].value"))
        )
    return tuple(messages)


def _sharegpt_reply(row: dict, name: str, source: str, line: int) -> str:
    reply = row.get(name)
    if not isinstance(reply, dict) or reply.get("from") != "gpt":
        raise DataError(
            source,
            line,
            name,
            f"must be {{'from': 'gpt', 'value': ...}}, got {reply!r:.80}",
            reason="missing_field" if reply is None else "bad_field",
        )
    return _text(reply.get("value"), source, line, f"{name}.value")


def parse_sharegpt(row: Any, source: str, line: int) -> tuple[tuple[Message, ...], str, str]:
    messages = _sharegpt_turns(row, source, line)
    validate_prompt_messages(messages, source, line, "conversations")
    return messages, _sharegpt_reply(row, "chosen", source, line), _sharegpt_reply(row, "rejected", source, line)


def parse_iopo_sharegpt(row: Any, source: str, line: int) -> tuple[tuple[Message, ...], tuple[Message, ...], str, str]:
    messages = _sharegpt_turns(row, source, line)
    head = messages[:1] if messages and messages[0].role == "system" else ()
    turns = messages[len(head) :]
    if len(turns) != 2 or any(t.role != "user" for t in turns):
        raise DataError(source, line, "conversations", "IOPO rows hold exactly two human turns [x1, x2]")
    x1, x2 = head + turns[:1], head + turns[1:]
    if x1 == x2:
        raise DataError(source, line, "conversations", "x1 and x2 are identical")
    return x1, x2, _sharegpt_reply(row, "chosen", source, line), _sharegpt_reply(row, "rejected", source, line)


def parse_hh(row: Any, source: str, line: int) -> tuple[tuple[Message, ...], str, str]:
    if not isinstance(row, dict):
        raise DataError(source, line, "<row>", f"must be an object, got {row!r:.80}")
    chosen_full = _text(row.get("chosen"), source, line, "chosen")
    rejected_full = _text(row.get("rejected"), source, line, "rejected")
    cut_c, cut_r = chosen_full.rfind(HH_ASSISTANT), rejected_full.rfind(HH_ASSISTANT)
    if cut_c < 0 or cut_r < 0:
        raise DataError(source, line, "chosen" if cut_c < 0 else "rejected", f"has no {HH_ASSISTANT!r} turn")
    if chosen_full[:cut_c] != rejected_full[:cut_r]:
        raise DroppedRow("prefix_mismatch")
    parts = _HH_TURN.split(chosen_full[:cut_c])
    if parts[0].strip():
        raise DataError(source, line, "chosen", "text before the first 'Human:' turn")
    roles = {"Human": "user", "Assistant": "assistant"}
    messages = tuple(Message(roles[parts[i]], parts[i + 1].strip()) for i in range(1, len(parts), 2))
    validate_prompt_messages(messages, source, line, "chosen (dialogue before the last Assistant turn)")
    chosen = _text(chosen_full[cut_c + len(HH_ASSISTANT) :].strip(), source, line, "chosen (last Assistant turn)")
    rejected = _text(rejected_full[cut_r + len(HH_ASSISTANT) :].strip(), source, line, "rejected (last Assistant turn)")
    return messages, chosen, rejected


def row_scores(row: Any, source: str, line: int) -> tuple[float, float] | None:
    """(chosen, rejected) scores of a row holding a pair of `SCORE_FIELDS` (None when it has none, or one is null).
    Raises DroppedRow `ties` when they are equal and `chosen_scored_lower` when the chosen one scores lower: such a
    row states no preference, or the opposite one."""
    if not isinstance(row, dict):
        return None
    for keys in SCORE_FIELDS:
        if not any(key in row for key in keys):
            continue
        if any(row.get(key) is None for key in keys):
            return None
        for key in keys:
            value = row[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise DataError(source, line, key, f"must be a finite number, got {value!r:.80}")
        chosen, rejected = (float(row[key]) for key in keys)
        if chosen == rejected:
            raise DroppedRow("ties")
        if chosen < rejected:
            raise DroppedRow("chosen_scored_lower")
        return chosen, rejected
    return None


def _to_record(fmt: str, recipe: str, parsed: tuple, source: str, line: int, scores=None) -> PairRecord:
    provenance = {"source": source, "line": line, "format": fmt}
    if scores is not None:
        provenance["scores"] = list(scores)
    if fmt == "iopo-sharegpt":
        x1, x2, y1, y2 = parsed
        sequences = (Sequence(x1, y1), Sequence(x1, y2), Sequence(x2, y2), Sequence(x2, y1))
    else:
        messages, chosen, rejected = parsed
        sequences = (Sequence(messages, chosen), Sequence(messages, rejected))
    if sequences[0].response == sequences[1].response:
        raise DroppedRow("identical_responses")
    return PairRecord.make(recipe, sequences, 0, f"{source}:{line}", provenance)


PARSERS = {"trl": parse_trl, "sharegpt": parse_sharegpt, "hh-rlhf": parse_hh, "iopo-sharegpt": parse_iopo_sharegpt}


def import_pairs(path: str, fmt: str, recipe: str, stats: BuildStats, bad: BadRows | None) -> Iterator[PairRecord]:
    """Pair records from a preference file; every row ends in one outcome in `stats.outcomes`."""
    bad_before = bad.total if bad is not None else 0
    unparsed_before = unparsed_count(bad)
    seen: set[str] = set()
    for line, row in iter_table_rows(path) if is_table_input(path) else iter_json_rows(path, bad):
        stats.inputs["pair_rows"] += 1
        if fmt == "auto":
            fmt = detect_format(row, recipe, path, line)
        if (fmt == "iopo-sharegpt") != (recipe == "iopo"):
            raise UserError(f"{path} is format {fmt}, which does not fit --recipe {recipe} (iopo-sharegpt is IOPO's)")
        try:
            record = guard(
                bad,
                lambda row=row, line=line, fmt=fmt: _to_record(
                    fmt, recipe, PARSERS[fmt](row, path, line), path, line, row_scores(row, path, line)
                ),
            )
        except DroppedRow as drop:
            stats.outcomes[drop.reason] += 1
            continue
        if record is None:
            continue
        if record.id in seen:
            stats.outcomes["duplicate_pair"] += 1
            continue
        seen.add(record.id)
        stats.outcomes["emitted"] += 1
        yield record
    if bad is not None:
        # Lines that are not UTF-8 or not JSON are never yielded as rows, but they are rows of the input.
        stats.inputs["pair_rows"] += unparsed_count(bad) - unparsed_before
        stats.outcomes["bad_input"] += bad.total - bad_before
