"""A pair file (from `build-pairs`) -> a tokenized shard folder: ArrayRecord shards + manifest.json.

Bad rows raise a `DataError` naming file, line and field; with `skip_bad` they are counted per reason in the
manifest instead. A pair whose sequences tokenize identically (chosen == rejected, before or after
truncation) is such a row (`identical_sequences`): its preference is 0 - 0, no gradient, it only dilutes a batch.
Rows removed by the truncation policy are always counted (`counts.dropped`). The manifest's fingerprint covers
everything the tokens depend on (`SourceFingerprint`), so a stale folder is recognised.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from data_pipeline.files import file_sha256
from data_pipeline.pairs.readers import BadRows, guard, iter_json_rows, unparsed_count
from data_pipeline.pairs.schema import DataError, PairRecord
from data_pipeline.records.shards import ShardWriter, compute_fingerprint, tokenizer_file_hashes
from data_pipeline.records.tokenize import (
    Dropped,
    PairTokenizer,
    TokenizedExample,
    load_tokenizer,
    resolve_chat_template,
)
from data_pipeline.records.truncation import TruncationSettings


def dropped_text(dropped: Mapping[str, int]) -> str:
    """'0', or '5 (prompt_too_long: 2, sequence_too_long: 3)': the manifest's `counts.dropped` for a person."""
    total = sum(dropped.values())
    reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(dropped.items()) if n)
    return f"{total} ({reasons})" if total else "0"


@dataclasses.dataclass(frozen=True)
class SourceFingerprint:
    """What a shard folder is built from: pair file, tokenizer files, chat template text, truncation settings."""

    input_sha256: str
    tokenizer_hashes: dict
    settings: dict
    fingerprint: str

    @classmethod
    def of(
        cls, input_path: str | Path, tokenizer_dir: str | Path, chat_template: str, settings: TruncationSettings
    ) -> SourceFingerprint:
        input_sha, hashes, settings_json = (
            file_sha256(input_path),
            tokenizer_file_hashes(tokenizer_dir),
            settings.to_json(),
        )
        return cls(
            input_sha, hashes, settings_json, compute_fingerprint(input_sha, hashes, chat_template, settings_json)
        )


def build_shards(
    input_path: str | Path,
    tokenizer_dir: str | Path,
    output_dir: str | Path,
    settings: TruncationSettings,
    *,
    chat_template_path: str | Path | None = None,
    num_shards: int = 1,
    skip_bad: bool = False,
    overwrite: bool = False,
) -> dict:
    """Tokenizes every pair of `input_path` and writes the shard folder; returns the manifest."""
    input_path, tokenizer_dir = str(input_path), Path(tokenizer_dir)
    tokenizer = load_tokenizer(tokenizer_dir)
    chat_template, template_source = resolve_chat_template(tokenizer, chat_template_path)
    pair_tokenizer = PairTokenizer(tokenizer, chat_template, settings)
    bad = BadRows() if skip_bad else None
    input_rows, per_recipe, dropped, truncated = 0, Counter(), Counter(), Counter()

    with ShardWriter(output_dir, num_shards=num_shards, overwrite=overwrite) as writer:
        for line, obj in iter_json_rows(input_path, bad):
            input_rows += 1
            result = guard(bad, lambda obj=obj, line=line: _tokenize_row(pair_tokenizer, writer, obj, input_path, line))
            if result is None:
                continue
            if isinstance(result, Dropped):
                dropped[result.reason] += 1
                continue
            writer.add(result)
            per_recipe[result.recipe] += 1
            truncated["examples"] += result.truncated
            truncated["prompt_cut"] += result.prompt_cut
            truncated["response_cut"] += result.response_cut
        if bad is not None:
            input_rows += unparsed_count(bad)  # lines that are not UTF-8 or not JSON never reach the loop body
            dropped.update({f"bad_row:{reason}": n for reason, n in bad.counts.items()})
        if writer.num_examples == 0:
            left = f"no examples left to write ({input_rows} input rows, dropped {dropped_text(dropped)})"
            raise DataError(input_path, None, "<file>", left, reason="empty")

        source = SourceFingerprint.of(input_path, tokenizer_dir, chat_template, settings)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        manifest = {
            "fingerprint": source.fingerprint,
            "settings": source.settings,
            "max_length": settings.max_length,
            "pad_token_id": int(pad_id),
            "source": {"input": input_path, "input_sha256": source.input_sha256},
            "tokenizer": {
                "path": str(tokenizer_dir),
                "files_sha256": source.tokenizer_hashes,
                "class": type(tokenizer).__name__,
                "vocab_size": len(tokenizer),
                "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id,
                "end_of_turn_id": pair_tokenizer.end_of_turn_id,
            },
            "chat_template": {"source": template_source, "text": chat_template},
            "counts": {
                "input_rows": input_rows,
                "examples": writer.num_examples,
                "per_recipe": dict(sorted(per_recipe.items())),
                "truncated": {k: truncated[k] for k in ("examples", "prompt_cut", "response_cut")},
                "dropped": dict(sorted(dropped.items())),
                "dropped_frac": (input_rows - writer.num_examples) / max(input_rows, 1),
                "bad_rows": bad.to_json() if bad is not None else None,
            },
        }
        return writer.finish(manifest)


def _tokenize_row(pair_tokenizer: PairTokenizer, writer: ShardWriter, obj, source: str, line: int):
    record = PairRecord.from_json(obj, source, line)
    group_size = len(record.sequences)
    if writer.group_size is not None and group_size != writer.group_size:
        raise DataError(
            source,
            line,
            "recipe",
            f"{record.recipe} has {group_size} sequences but earlier rows have "
            f"{writer.group_size}; one shard folder holds one group size (tokenize iopo separately)",
            reason="group_size_mismatch",
        )
    result = pair_tokenizer.tokenize(record, source, line)
    if isinstance(result, TokenizedExample):
        _check_sequences_differ(result, source, line)
    return result


def _check_sequences_differ(example: TokenizedExample, source: str, line: int) -> None:
    """Every sequence of a group must differ from the others: a DPO/RPO pair whose chosen equals its rejected
    (or an IOPO group with a repeated sequence) contributes a zero preference and no gradient."""
    rows = [row.tobytes() for row in example.rows]
    for later in range(1, len(rows)):
        if rows[later] in rows[:later]:
            first = rows.index(rows[later])
            raise DataError(
                source,
                line,
                f"sequences[{later}]",
                f"tokenizes to the same tokens as sequences[{first}] (chosen == rejected after the chat template "
                "and truncation): the pair carries no preference",
                reason="identical_sequences",
            )
