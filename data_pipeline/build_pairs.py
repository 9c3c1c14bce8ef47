"""`rpo-jax build-pairs`: raw instructions + responses, or preference files, → pairs.jsonl + stats.json.

Pool recipes (need --responses): rpo (reversed-constraint pairs), iopo (quadruples from the same pool), dpo
(baseline: original prompt, more satisfied constraints ≻ fewer). Imports (no --responses): dpo from
trl / sharegpt / hh-rlhf rows, iopo from IOPO's sharegpt file. See data_pipeline/README.md.

Output is written into a temporary folder beside --output and renamed into place at the end, so a crashed
build never leaves a folder that looks complete.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from data_pipeline.llm_judge import JudgeConfig, LLMJudge
from data_pipeline.local_paths import local_path_arg
from data_pipeline.readers import BadRows, read_instructions, read_responses
from data_pipeline.recipes.dpo import dpo_baseline_pairs
from data_pipeline.recipes.imports import FORMATS, import_pairs
from data_pipeline.recipes.iopo import iopo_quads
from data_pipeline.recipes.pool import ConstraintOracle
from data_pipeline.recipes.pool_builder import build_pools, match_responses
from data_pipeline.recipes.rpo import rpo_pairs
from data_pipeline.recipes.stats import BuildStats
from data_pipeline.schema import RECIPES, DataError, PairRecord
from data_pipeline.shards import file_sha256

DEFAULT_MIN_G = 3  # RPO keeps g >= 3 (`margin > 2`), algorithms.md §5 step 7


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", choices=RECIPES, required=True)
    parser.add_argument("--input", required=True, type=local_path_arg,
                        help="instructions (IFEval rows or our schema), or a preference file to import when "
                        "--responses is not given")
    parser.add_argument("--responses", type=local_path_arg,
                        help="responses jsonl (key|prompt, response, optional sample_id)")
    parser.add_argument("--output", required=True, type=local_path_arg,
                        help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--min-g", type=int, default=None, help=f"pool recipes: least g kept (default {DEFAULT_MIN_G})")
    parser.add_argument("--skip-bad", action="store_true", help="count and skip bad rows instead of failing")
    parser.add_argument("--format", choices=("auto", *FORMATS), default="auto", help="imports: input format")
    parser.add_argument("--judge-base-url", help="OpenAI-compatible endpoint for free_form constraints")
    parser.add_argument("--judge-model")
    parser.add_argument("--judge-api-key-env", help="name of the environment variable holding the API key")
    parser.add_argument("--judge-cache-dir", type=local_path_arg,
                        help="judge cache (default: <output>.judge_cache beside --output)")
    parser.add_argument("--judge-max-workers", type=int, default=4, help="concurrent judge requests")
    parser.add_argument("--eval-fraction", type=float, default=0.0, help="share of groups held out in eval_pairs.jsonl")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split")


def _validate(args: argparse.Namespace) -> None:
    pool = args.responses is not None
    if args.recipe == "rpo" and not pool:
        raise SystemExit("build-pairs: --recipe rpo needs --responses (RPO pairs are built from a response pool)")
    if pool and args.format != "auto":
        raise SystemExit("build-pairs: --format applies to imports only (no --responses)")
    judge_args = (args.judge_base_url, args.judge_model, args.judge_api_key_env, args.judge_cache_dir)
    if not pool and (args.min_g is not None or any(judge_args)):
        raise SystemExit("build-pairs: --min-g and --judge-* apply to pool recipes only (with --responses)")
    if bool(args.judge_base_url) != bool(args.judge_model):
        raise SystemExit("build-pairs: give both --judge-base-url and --judge-model, or neither")
    if (args.judge_api_key_env or args.judge_cache_dir) and not args.judge_base_url:
        raise SystemExit("build-pairs: --judge-api-key-env / --judge-cache-dir need --judge-base-url")
    if args.min_g is not None and args.min_g < 1:
        raise SystemExit("build-pairs: --min-g must be >= 1")
    if not 0.0 <= args.eval_fraction < 1.0:
        raise SystemExit("build-pairs: --eval-fraction must be in [0, 1)")
    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise SystemExit(f"build-pairs: {output} exists (pass --overwrite to replace it)")


def _make_judge(args: argparse.Namespace) -> LLMJudge | None:
    if not args.judge_base_url:
        return None
    output = Path(args.output)
    cache = Path(args.judge_cache_dir) if args.judge_cache_dir else output.with_name(output.name + ".judge_cache")
    return LLMJudge(JudgeConfig(args.judge_base_url, args.judge_model, cache, args.judge_api_key_env,
                                max_workers=args.judge_max_workers))


def build_records(args: argparse.Namespace, stats: BuildStats, bad: BadRows | None) -> list[PairRecord]:
    if args.responses is None:
        return list(import_pairs(args.input, args.format, args.recipe, stats, bad))
    min_g = DEFAULT_MIN_G if args.min_g is None else args.min_g
    judge = _make_judge(args)
    instructions = read_instructions(args.input, bad)
    stats.inputs["instruction_rows"] = len(instructions) + (bad.total if bad is not None else 0)
    bad_before = bad.total if bad is not None else 0
    raw, rows = read_responses(args.responses, bad)
    stats.inputs["responses_rows"] = rows
    stats.outcomes["bad_input"] += (bad.total if bad is not None else 0) - bad_before
    oracle = ConstraintOracle(judge, stats)
    matched = match_responses(instructions, raw, stats, bad)
    pools = build_pools(instructions, matched, oracle, stats)
    if args.recipe == "rpo":
        records = list(rpo_pairs(pools, oracle, min_g, stats))
    elif args.recipe == "iopo":
        records = list(iopo_quads(pools, oracle, min_g, stats))
    else:
        records = list(dpo_baseline_pairs(pools, min_g, stats))
    if judge is not None:
        stats.judge_counts.update(judge.counts)
    return records


def split_by_group(records: list[PairRecord], fraction: float, seed: int) -> tuple[list[PairRecord], list[PairRecord]]:
    """(train, eval): whole groups (instructions) go to eval, so no instruction is in both."""
    if fraction == 0.0:
        return records, []
    groups = sorted({r.group_id for r in records})
    random.Random(seed).shuffle(groups)
    n_eval = round(fraction * len(groups))
    if n_eval == 0 and len(groups) >= 2:
        n_eval = 1  # a fraction was asked for: hold out at least one group
    held_out = set(groups[:n_eval])
    return [r for r in records if r.group_id not in held_out], [r for r in records if r.group_id in held_out]



def write_jsonl(path: Path, records: Iterable[PairRecord]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")


def write_output_atomically(output: Path, files: dict[str, object]) -> None:
    """Write `files` (name -> records list or JSON object) into a temp folder, then rename it to `output`."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.tmp-"))
    try:
        for name, content in files.items():
            if isinstance(content, list):
                write_jsonl(tmp / name, content)
            else:
                (tmp / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if output.exists():
            old = output.with_name(f".{output.name}.old-{os.getpid()}")
            os.replace(output, old)
            os.replace(tmp, output)
            shutil.rmtree(old)
        else:
            os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def run(args: argparse.Namespace) -> int:
    _validate(args)
    stats = BuildStats(args.recipe, "responses" if args.responses else "rows")
    bad = stats.bad if args.skip_bad else None
    try:
        records = build_records(args, stats, bad)
    except DataError as err:
        print(f"build-pairs: bad input: {err}\n(pass --skip-bad to count and skip bad rows)", file=sys.stderr)
        return 1
    train, held_out = split_by_group(records, args.eval_fraction, args.seed)
    stats.emitted = len(records)
    stats.split = {"train": len(train), "eval": len(held_out)}
    inputs = [p for p in (args.input, args.responses) if p]
    summary = stats.to_json()
    summary["settings"] = {
        "inputs": {p: file_sha256(p) for p in inputs}, "recipe": args.recipe, "format": args.format,
        "min_g": (DEFAULT_MIN_G if args.min_g is None else args.min_g) if args.responses else None,
        "skip_bad": args.skip_bad, "eval_fraction": args.eval_fraction, "seed": args.seed,
        "judge": {"base_url": args.judge_base_url, "model": args.judge_model} if args.judge_base_url else None,
    }
    files: dict[str, object] = {"pairs.jsonl": train}
    if args.eval_fraction > 0.0:
        files["eval_pairs.jsonl"] = held_out
    files["stats.json"] = summary
    write_output_atomically(Path(args.output), files)
    print(f"build-pairs: {len(train)} train + {len(held_out)} eval {args.recipe} records -> {args.output}",
          file=sys.stderr)
    return 0
