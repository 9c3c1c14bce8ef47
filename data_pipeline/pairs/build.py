"""One pair build: raw instructions + responses, or a preference file, -> pairs.jsonl (+ eval_pairs.jsonl) and
stats.json in a new folder (`rpo-jax build-pairs`, see data_pipeline/README.md).

Pool recipes (need `responses`): rpo (reversed-constraint pairs), iopo (quadruples from the same pool), dpo
(baseline: original prompt, more satisfied constraints ≻ fewer). Imports (no `responses`): dpo from
trl / sharegpt / hh-rlhf rows, iopo from IOPO's sharegpt file.

Output is written into a temporary folder beside `output` and renamed into place at the end, so a crashed
build never leaves a folder that looks complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from data_pipeline.constraints.llm_judge import JudgeConfig, LLMJudge
from data_pipeline.errors import UserError
from data_pipeline.pairs.dpo import DPO_PAIRINGS, dpo_baseline_pairs
from data_pipeline.pairs.imports import FORMATS, import_pairs
from data_pipeline.pairs.iopo import iopo_quads
from data_pipeline.pairs.pool import ConstraintOracle
from data_pipeline.pairs.pool_builder import build_pools, match_responses
from data_pipeline.pairs.readers import BadRows, read_instructions, read_responses
from data_pipeline.pairs.rpo import rpo_pairs
from data_pipeline.pairs.schema import RECIPES, PairRecord
from data_pipeline.pairs.stats import BuildStats
from data_pipeline.pairs.table_rows import input_sha256

DEFAULT_MIN_G = 3  # RPO keeps g >= 3 (`margin > 2`), docs/algorithms.md §5 step 7


@dataclasses.dataclass(frozen=True)
class JudgeSettings:
    """An OpenAI-compatible endpoint that judges and reverses free-form constraints."""

    base_url: str
    model: str
    api_key_env: str | None = None  # name of the environment variable holding the key
    cache_dir: str | None = None  # default: `<output>.judge_cache` beside the output folder
    max_workers: int = 4


@dataclasses.dataclass(frozen=True)
class BuildSettings:
    """What one build reads and writes; the flags of `rpo-jax build-pairs` map onto these one to one."""

    recipe: str
    input: str
    output: str
    responses: str | None = None  # a response pool: pool recipes; None: import `input` as preference rows
    overwrite: bool = False
    min_g: int | None = None  # pool recipes: least g kept (None: DEFAULT_MIN_G)
    skip_bad: bool = False
    format: str = "auto"  # imports: the input format
    judge: JudgeSettings | None = None
    dpo_pairing: str = "all"  # dpo pool recipe: all pairs with different scores, or best vs worst per instruction
    eval_fraction: float = 0.0  # share of groups held out in eval_pairs.jsonl
    seed: int = 0  # of the held-out split
    allow_empty: bool = False  # write an output with no records instead of failing

    def __post_init__(self):
        pool = self.responses is not None
        if self.recipe not in RECIPES:
            raise UserError(f"--recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        if self.recipe == "rpo" and not pool:
            raise UserError("--recipe rpo needs --responses (RPO pairs are built from a response pool)")
        if pool and self.format != "auto":
            raise UserError("--format applies to imports only (no --responses)")
        if self.format not in ("auto", *FORMATS):
            raise UserError(f"--format must be auto or one of {', '.join(FORMATS)}")
        if not pool and (self.min_g is not None or self.judge is not None):
            raise UserError("--min-g and --judge-* apply to pool recipes only (with --responses)")
        if self.dpo_pairing not in DPO_PAIRINGS:
            raise UserError(f"--dpo-pairing must be one of {', '.join(DPO_PAIRINGS)}")
        if self.dpo_pairing != "all" and not (pool and self.recipe == "dpo"):
            raise UserError("--dpo-pairing applies to --recipe dpo with --responses only")
        if self.min_g is not None and self.min_g < 1:
            raise UserError("--min-g must be >= 1")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise UserError("--eval-fraction must be in [0, 1)")

    @property
    def effective_min_g(self) -> int:
        return DEFAULT_MIN_G if self.min_g is None else self.min_g


def _make_judge(settings: BuildSettings) -> LLMJudge | None:
    judge = settings.judge
    if judge is None:
        return None
    output = Path(settings.output)
    cache = Path(judge.cache_dir) if judge.cache_dir else output.with_name(output.name + ".judge_cache")
    return LLMJudge(JudgeConfig(judge.base_url, judge.model, cache, judge.api_key_env, max_workers=judge.max_workers))


def build_records(settings: BuildSettings, stats: BuildStats, bad: BadRows | None) -> list[PairRecord]:
    if settings.responses is None:
        return list(import_pairs(settings.input, settings.format, settings.recipe, stats, bad))
    judge = _make_judge(settings)
    instructions = read_instructions(settings.input, bad)
    stats.inputs["instruction_rows"] = len(instructions) + (bad.total if bad is not None else 0)
    bad_before = bad.total if bad is not None else 0
    raw, rows = read_responses(settings.responses, bad)
    stats.inputs["responses_rows"] = rows
    stats.outcomes["bad_input"] += (bad.total if bad is not None else 0) - bad_before
    oracle = ConstraintOracle(judge, stats)
    matched = match_responses(instructions, raw, stats, bad)
    pools = build_pools(instructions, matched, oracle, stats)
    min_g = settings.effective_min_g
    if settings.recipe == "rpo":
        records = list(rpo_pairs(pools, oracle, min_g, stats))
    elif settings.recipe == "iopo":
        records = list(iopo_quads(pools, oracle, min_g, stats))
    else:
        records = list(dpo_baseline_pairs(pools, min_g, stats, settings.dpo_pairing))
    if judge is not None:
        stats.judge_counts.update(judge.counts)
    return records


def _group_rank(seed: int, group_id: str) -> str:
    return hashlib.sha256(f"{seed}:{group_id}".encode()).hexdigest()


def split_by_group(records: list[PairRecord], fraction: float, seed: int) -> tuple[list[PairRecord], list[PairRecord]]:
    """(train, eval): whole groups (instructions) go to eval, so no instruction is in both.

    Groups are ranked by a hash of (seed, group id), not shuffled as a list: a group that comes or goes (a checker
    fix, one more prompt) moves at most one group across the split instead of reshuffling the held-out set.
    """
    if fraction == 0.0:
        return records, []
    groups = sorted({r.group_id for r in records}, key=lambda g: _group_rank(seed, g))
    n_eval = round(fraction * len(groups))
    if n_eval == 0 and len(groups) >= 2:
        n_eval = 1  # a fraction was asked for: hold out at least one group
    held_out = set(groups[:n_eval])
    return [r for r in records if r.group_id not in held_out], [r for r in records if r.group_id in held_out]


def write_jsonl(path: Path, records: Iterable[PairRecord | dict]) -> None:
    """One JSON object per line: pair records in their JSON form, plain dicts as they are."""
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(
                json.dumps(record if isinstance(record, dict) else record.to_json(), ensure_ascii=False) + "\n"
            )


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


def build_pairs(settings: BuildSettings) -> dict:
    """Runs the build and publishes the output folder; returns stats.json's content. Bad input raises a
    `DataError` naming file, line and field, unless `skip_bad` counts it in the stats instead."""
    output = Path(settings.output)
    if output.exists() and not settings.overwrite:
        raise UserError(f"{output} already exists; pass --overwrite to replace it")
    stats = BuildStats(settings.recipe, "responses" if settings.responses else "rows")
    records = build_records(settings, stats, stats.bad if settings.skip_bad else None)
    if not records and not settings.allow_empty:
        min_g = f" (--min-g {settings.effective_min_g})" if settings.responses else ""
        raise UserError(
            f"0 {settings.recipe} records from {settings.input}{min_g}; main drop reason: "
            f"{stats.main_drop_reason()}. Pass --allow-empty to write an empty output."
        )
    train, held_out = split_by_group(records, settings.eval_fraction, settings.seed)
    stats.emitted = len(records)
    stats.split = {"train": len(train), "eval": len(held_out)}
    summary = stats.to_json()
    summary["settings"] = {
        "inputs": {p: input_sha256(p) for p in (settings.input, settings.responses) if p},
        "recipe": settings.recipe,
        "format": settings.format,
        "min_g": settings.effective_min_g if settings.responses else None,
        "dpo_pairing": settings.dpo_pairing if settings.recipe == "dpo" and settings.responses else None,
        "skip_bad": settings.skip_bad,
        "eval_fraction": settings.eval_fraction,
        "seed": settings.seed,
        "allow_empty": settings.allow_empty,
        "judge": {"base_url": settings.judge.base_url, "model": settings.judge.model} if settings.judge else None,
    }
    files: dict[str, object] = {"pairs.jsonl": train}
    if settings.eval_fraction > 0.0:
        files["eval_pairs.jsonl"] = held_out
    files["stats.json"] = summary
    write_output_atomically(output, files)
    return summary
