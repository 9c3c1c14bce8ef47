"""`rpo-jax tokenize`: pair JSONL (from `build-pairs`) -> ArrayRecord shards + manifest.json.

    rpo-jax tokenize --input pairs.jsonl --tokenizer data_pipeline/assets/tokenizers/llama2-sp-32k \\
        --output data/shards --max-length 1024 [--truncation drop|keep_start|split] [--max-prompt-length N]
        [--chat-template FILE] [--num-shards K] [--skip-bad] [--overwrite]

Bad rows raise a `DataError` naming file, line and field; with `--skip-bad` they are counted per reason in the
manifest instead. Rows removed by the truncation policy are always counted (`counts.dropped`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from data_pipeline.local_paths import local_path_arg
from data_pipeline.readers import BadRows, guard, iter_json_rows
from data_pipeline.schema import DataError, PairRecord
from data_pipeline.shards import ShardWriter, compute_fingerprint, file_sha256, tokenizer_file_hashes
from data_pipeline.tokenize import Dropped, PairTokenizer, load_tokenizer, resolve_chat_template
from data_pipeline.truncation import TRUNCATION_MODES, TruncationSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, type=local_path_arg,
                        help="pairs JSONL written by `rpo-jax build-pairs`")
    parser.add_argument("--tokenizer", required=True, type=local_path_arg, help="local HF tokenizer folder (e.g. "
                        "data_pipeline/assets/tokenizers/llama2-sp-32k)")
    parser.add_argument("--output", required=True, type=local_path_arg,
                        help="shard folder to create (written atomically)")
    parser.add_argument("--max-length", type=int, required=True, help="max tokens per sequence (prompt+response)")
    parser.add_argument("--truncation", choices=TRUNCATION_MODES, default="drop",
                        help="drop (default) over-long pairs, keep_start (TRL v1: cut the response tail), or "
                        "split (TRL <= 0.28: prompt from the left, responses from the right)")
    parser.add_argument("--max-prompt-length", type=int, default=None,
                        help="prompt budget for --truncation split (default max-length // 2)")
    parser.add_argument("--chat-template", default=None, type=local_path_arg,
                        help="Jinja chat template file; default: the tokenizer's own, else "
                        "data_pipeline/assets/chat_templates/llama3.jinja")
    parser.add_argument("--num-shards", type=int, default=1, help="number of ArrayRecord files")
    parser.add_argument("--skip-bad", action="store_true", help="count and skip bad rows instead of failing")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output folder")


def run(args: argparse.Namespace) -> int:
    try:
        settings = TruncationSettings(args.max_length, args.truncation, args.max_prompt_length)
    except ValueError as err:
        print(f"rpo-jax tokenize: {err}", file=sys.stderr)
        return 2
    try:
        manifest = build_shards(args.input, args.tokenizer, args.output, settings,
                                chat_template_path=args.chat_template, num_shards=args.num_shards,
                                skip_bad=args.skip_bad, overwrite=args.overwrite)
    except (DataError, FileNotFoundError, FileExistsError) as err:
        print(f"rpo-jax tokenize: {err}", file=sys.stderr)
        return 1
    counts = manifest["counts"]
    print(json.dumps({"output": str(args.output), "fingerprint": manifest["fingerprint"],
                      "examples": counts["examples"], "per_recipe": counts["per_recipe"],
                      "truncated": counts["truncated"], "dropped": counts["dropped"],
                      "max_row_length": manifest["max_row_length"]}, indent=2))
    return 0


def build_shards(input_path: str | Path, tokenizer_dir: str | Path, output_dir: str | Path,
                 settings: TruncationSettings, *, chat_template_path: str | Path | None = None, num_shards: int = 1,
                 skip_bad: bool = False, overwrite: bool = False) -> dict:
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
            result = guard(bad, lambda obj=obj, line=line: _tokenize_row(pair_tokenizer, writer, obj,
                                                                        input_path, line))
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
            input_rows += bad.counts["malformed_json"]  # unparsable lines never reach the loop body
            dropped.update({f"bad_row:{reason}": n for reason, n in bad.counts.items()})
        if writer.num_examples == 0:
            raise DataError(input_path, None, "<file>", f"no examples left to write (dropped: {dict(dropped)})",
                            reason="empty")

        input_sha = file_sha256(input_path)
        tokenizer_hashes = tokenizer_file_hashes(tokenizer_dir)
        settings_json = settings.to_json()
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        manifest = {
            "fingerprint": compute_fingerprint(input_sha, tokenizer_hashes, chat_template, settings_json),
            "settings": settings_json,
            "max_length": settings.max_length,
            "pad_token_id": int(pad_id),
            "source": {"input": input_path, "input_sha256": input_sha},
            "tokenizer": {"path": str(tokenizer_dir), "files_sha256": tokenizer_hashes,
                          "class": type(tokenizer).__name__, "vocab_size": len(tokenizer),
                          "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                          "end_of_turn_id": pair_tokenizer.end_of_turn_id},
            "chat_template": {"source": template_source, "text": chat_template},
            "counts": {"input_rows": input_rows, "examples": writer.num_examples,
                       "per_recipe": dict(sorted(per_recipe.items())),
                       "truncated": {k: truncated[k] for k in ("examples", "prompt_cut", "response_cut")},
                       "dropped": dict(sorted(dropped.items())),
                       "dropped_frac": (input_rows - writer.num_examples) / max(input_rows, 1),
                       "bad_rows": bad.to_json() if bad is not None else None},
        }
        return writer.finish(manifest)


def _tokenize_row(pair_tokenizer: PairTokenizer, writer: ShardWriter, obj, source: str, line: int):
    record = PairRecord.from_json(obj, source, line)
    group_size = len(record.sequences)
    if writer.group_size is not None and group_size != writer.group_size:
        raise DataError(source, line, "recipe", f"{record.recipe} has {group_size} sequences but earlier rows have "
                        f"{writer.group_size}; one shard folder holds one group size (tokenize iopo separately)",
                        reason="group_size_mismatch")
    return pair_tokenizer.tokenize(record, source, line)
