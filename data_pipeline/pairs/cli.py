"""`rpo-jax build-pairs`: raw instructions + responses, or preference files, -> pairs.jsonl + stats.json.

Flags map one to one onto `data_pipeline.pairs.build.BuildSettings`; see data_pipeline/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from data_pipeline.errors import UserError
from data_pipeline.files import local_path_arg
from data_pipeline.pairs.build import DEFAULT_MIN_G, BuildSettings, JudgeSettings, build_pairs
from data_pipeline.pairs.dpo import DPO_PAIRINGS
from data_pipeline.pairs.imports import FORMATS
from data_pipeline.pairs.schema import RECIPES, DataError
from data_pipeline.storage import is_bucket_path, local_cache_dir, local_copy, staged_output, storage_path_arg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    arg = parser.add_argument
    arg("--recipe", choices=RECIPES, required=True, help="rpo, iopo or dpo")
    arg(
        "--input",
        required=True,
        type=storage_path_arg,
        help="instructions (IFEval rows or our schema), or, when --responses is not given, preference rows to import: "
        "JSON/JSONL, a .parquet file or a Hugging Face datasets folder (save_to_disk)",
    )
    arg(
        "--responses",
        type=storage_path_arg,
        help="responses jsonl (key|prompt, response, optional sample_id); default: none, --input is a preference "
        "file to import",
    )
    arg(
        "--output",
        required=True,
        type=storage_path_arg,
        help="output folder, local or gs:// (must not exist unless --overwrite)",
    )
    arg("--overwrite", action="store_true", help="replace an existing output folder")
    arg("--min-g", type=int, default=None, help=f"pool recipes: least g kept (default: {DEFAULT_MIN_G})")
    arg("--skip-bad", action="store_true", help="count and skip bad rows instead of failing")
    arg("--format", choices=("auto", *FORMATS), default="auto", help="imports: input format")
    arg("--judge-base-url", help="OpenAI-compatible endpoint judging free_form constraints (default: none)")
    arg("--judge-model", help="model name sent to the judge endpoint (default: none; needed with --judge-base-url)")
    arg("--judge-api-key-env", help="name of the environment variable holding the API key (default: none, no key sent)")
    arg("--judge-cache-dir", type=local_path_arg, help="judge cache (default: <output>.judge_cache beside --output)")
    arg("--judge-max-workers", type=int, default=4, help="concurrent judge requests")
    arg(
        "--dpo-pairing",
        choices=DPO_PAIRINGS,
        default="all",
        help="dpo from a pool: all pairs with different scores, or the best vs the worst response per instruction",
    )
    arg(
        "--eval-fraction",
        type=float,
        default=0.0,
        help="share of groups held out in eval_pairs.jsonl (0 = none: no eval_pairs.jsonl)",
    )
    arg("--seed", type=int, default=0, help="seed of the held-out split")
    arg("--allow-empty", action="store_true", help="write an output with 0 records instead of failing")


def _judge(args: argparse.Namespace) -> JudgeSettings | None:
    if bool(args.judge_base_url) != bool(args.judge_model):
        raise UserError("give both --judge-base-url and --judge-model, or neither")
    if (args.judge_api_key_env or args.judge_cache_dir) and not args.judge_base_url:
        raise UserError("--judge-api-key-env / --judge-cache-dir need --judge-base-url")
    if not args.judge_base_url:
        return None
    return JudgeSettings(
        args.judge_base_url, args.judge_model, args.judge_api_key_env, args.judge_cache_dir, args.judge_max_workers
    )


def settings_from_args(args: argparse.Namespace) -> BuildSettings:
    return BuildSettings(
        recipe=args.recipe,
        input=args.input,
        output=args.output,
        responses=args.responses,
        overwrite=args.overwrite,
        min_g=args.min_g,
        skip_bad=args.skip_bad,
        format=args.format,
        judge=_judge(args),
        dpo_pairing=args.dpo_pairing,
        eval_fraction=args.eval_fraction,
        seed=args.seed,
        allow_empty=args.allow_empty,
    )


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    judge = settings.judge
    if judge is not None and judge.cache_dir is None and is_bucket_path(settings.output):  # the cache stays here
        judge = dataclasses.replace(judge, cache_dir=str(local_cache_dir("judge_cache", settings.output)))
    try:
        # A gs:// output is built on local disk, then uploaded with stats.json last (data_pipeline.storage).
        with staged_output(settings.output, marker="stats.json", overwrite=settings.overwrite) as output:
            inputs = {"input": local_copy(settings.input, "inputs"), "output": output, "judge": judge}
            if settings.responses:
                inputs["responses"] = local_copy(settings.responses, "inputs")
            summary = build_pairs(dataclasses.replace(settings, **inputs))
    except DataError as err:
        raise UserError(f"bad input: {err} (pass --skip-bad to count and skip bad rows)") from err
    split = summary["split"]
    print(
        f"build-pairs: {split['train']} train + {split['eval']} eval {settings.recipe} records -> {settings.output}",
        file=sys.stderr,
    )
    return 0
