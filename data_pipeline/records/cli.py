"""`rpo-jax tokenize`: pair JSONL (from `build-pairs`) -> ArrayRecord shards + manifest.json, a folder TFDS reads
as the split `train` (`tfds.builder_from_directory(DIR).as_data_source(split="train")`, no TensorFlow needed).

    rpo-jax tokenize --input pairs.jsonl --tokenizer data_pipeline/assets/tokenizers/llama2-sp-32k \\
        --output data/shards --max-length 1024 [--truncation drop|keep_start|split] [--max-prompt-length N]
        [--chat-template FILE] [--num-shards K] [--skip-bad] [--overwrite]
"""

from __future__ import annotations

import argparse
import json

from data_pipeline.errors import UserError
from data_pipeline.files import local_path_arg
from data_pipeline.records.build import build_shards
from data_pipeline.records.truncation import TRUNCATION_MODES, TruncationSettings
from data_pipeline.storage import local_copy, staged_output, storage_path_arg

# Uploaded last to a gs:// --output: `is_shard_folder` takes a folder holding either for a complete one.
SHARD_MARKERS = ("dataset_info.json", "manifest.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input", required=True, type=storage_path_arg, help="pairs JSONL written by `rpo-jax build-pairs` (or gs://)"
    )
    parser.add_argument(
        "--tokenizer",
        required=True,
        type=local_path_arg,
        help="local HF tokenizer folder (e.g. data_pipeline/assets/tokenizers/llama2-sp-32k)",
    )
    parser.add_argument(
        "--output",
        required=True,
        type=storage_path_arg,
        help="shard folder to create, local or gs:// (written atomically, or uploaded with manifest.json last; "
        "TFDS reads it as the split train)",
    )
    parser.add_argument("--max-length", type=int, required=True, help="max tokens per sequence (prompt+response)")
    parser.add_argument(
        "--truncation",
        choices=TRUNCATION_MODES,
        default="drop",
        help="drop over-long pairs, keep_start (TRL v1: cut the response tail), or "
        "split (TRL <= 0.28: prompt from the left, responses from the right)",
    )
    parser.add_argument(
        "--max-prompt-length",
        type=int,
        default=None,
        help="prompt budget for --truncation split (default: max-length // 2)",
    )
    parser.add_argument(
        "--chat-template",
        default=None,
        type=local_path_arg,
        help="Jinja chat template file; default: the tokenizer's own, else "
        "data_pipeline/assets/chat_templates/llama3.jinja",
    )
    parser.add_argument("--num-shards", type=int, default=1, help="number of ArrayRecord files")
    parser.add_argument("--skip-bad", action="store_true", help="count and skip bad rows instead of failing")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output folder")


def run(args: argparse.Namespace) -> int:
    try:
        settings = TruncationSettings(args.max_length, args.truncation, args.max_prompt_length)
    except ValueError as err:
        raise UserError(str(err)) from err
    try:
        with staged_output(args.output, marker=SHARD_MARKERS, overwrite=args.overwrite) as output:
            manifest = build_shards(
                local_copy(args.input, "pairs"),
                args.tokenizer,
                output,
                settings,
                chat_template_path=args.chat_template,
                num_shards=args.num_shards,
                skip_bad=args.skip_bad,
                overwrite=args.overwrite,
            )
    except (FileNotFoundError, FileExistsError) as err:
        raise UserError(str(err)) from err
    counts = manifest["counts"]
    print(
        json.dumps(
            {
                "output": str(args.output),
                "fingerprint": manifest["fingerprint"],
                "examples": counts["examples"],
                "per_recipe": counts["per_recipe"],
                "truncated": counts["truncated"],
                "dropped": counts["dropped"],
                "max_row_length": manifest["max_row_length"],
            },
            indent=2,
        )
    )
    return 0
