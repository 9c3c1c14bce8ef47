"""End to end on the real SmolLM2-135M-Instruct, through the CLI as a user runs it (issue #8's last "done when"):

    import-gguf -> generate (sampled) -> build-pairs --recipe rpo -> train (LoRA, RPO loss) -> eval (ifeval, pairs)

eval reads the trained run's HF export (`<output_dir>/hf`, LoRA merged) as it is, with no conversion step.

Each command runs as its own `python -m rpo_jax.cli` process on one CPU device (as tests/test_main_job.py), so
what passes between steps is only what the commands write. Sizes are kept small for a 2-core CPU: 5 IFEval prompts
x 4 samples of at most 40 new tokens, 2 LoRA steps of 2 pairs, greedy IFEval generation on 3 prompts.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from smollm2_assets import smollm2_gguf, smollm2_hf_dir

from data_pipeline import constraints as cons
from data_pipeline.pairs.pool import OVERRIDE_HEADER

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
IFEVAL = ROOT / "data_pipeline" / "assets" / "ifeval" / "input_data.jsonl"

# IFEval keys whose sampled responses differ on their constraints. Chosen because (a) every constraint of each
# has a clean reversal (IFEval states constraints inside the request text, so a response that fails a
# non-reversible one can never be chosen), and (b) 4 samples of SmolLM2 at temperature 1 and 40 new tokens gave
# 2-4 distinct verdict vectors per prompt when measured (seed 0, batch 20): together they cover keyword
# existence, forbidden words, no-comma, title, sentence count and word-count-below constraints.
#   340: one *italic* section, fewer than 30 words        3442: fewer than 20 words, a <<title>>
#   2811: forbidden words "Yo", "check", "peace"          3732: keywords "festival" and "river"
#   3256: a <<title>>, fewer than 13 sentences, no commas
# Not used: lowercase (SmolLM2 always capitalises; 0/4 samples passed) and postscript (no P.S. fits in 40 tokens),
# whose verdicts never varied, so they could not produce pairs.
PROMPT_KEYS = (340, 2811, 3256, 3442, 3732)
NUM_SAMPLES, MAX_NEW_TOKENS, SEED = 4, 40, 0
TRAIN_STEPS, BATCH_PAIRS, BETA, GAMMA = 2, 2, 0.1, 0.05
IFEVAL_LIMIT = 3


def rpo_jax(*args) -> subprocess.CompletedProcess:
    """Runs one CLI command in a fresh process with a single CPU device (no simulated devices from conftest)."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    command = [sys.executable, "-m", "rpo_jax.cli", *map(str, args)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (
        f"rpo-jax {' '.join(map(str, args))}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    )
    return result


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("smollm2_e2e")


@pytest.fixture(scope="module")
def tokenizer_dir() -> Path:
    return smollm2_hf_dir()  # the cached conversion of the same GGUF: tokenizer + chat template


@pytest.fixture(scope="module")
def instructions(work) -> Path:
    rows = {row["key"]: row for row in read_jsonl(IFEVAL)}
    path = work / "instructions.jsonl"
    path.write_text("".join(json.dumps(rows[key]) + "\n" for key in PROMPT_KEYS))
    return path


@pytest.fixture(scope="module")
def base_checkpoint(work) -> Path:
    rpo_jax("import-gguf", "--gguf", smollm2_gguf(), "--output", work / "base")
    return work / "base"


@pytest.fixture(scope="module")
def responses(work, base_checkpoint, tokenizer_dir, instructions) -> Path:
    prompts = work / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"key": r["key"], "prompt": r["prompt"]}) + "\n" for r in read_jsonl(instructions))
    )
    out = work / "responses.jsonl"
    rpo_jax(
        "generate",
        "--checkpoint",
        base_checkpoint,
        "--tokenizer",
        tokenizer_dir,
        "--prompts",
        prompts,
        "--output",
        out,
        "--num-samples",
        NUM_SAMPLES,
        "--max-new-tokens",
        MAX_NEW_TOKENS,
        "--temperature",
        "1.0",
        "--seed",
        SEED,
        "--batch-size",
        NUM_SAMPLES * len(PROMPT_KEYS),
    )
    return out


@pytest.fixture(scope="module")
def pairs_dir(work, instructions, responses) -> Path:
    # One instruction's pairs are held out (whole groups) for `eval --suite pairs`.
    rpo_jax(
        "build-pairs",
        "--recipe",
        "rpo",
        "--input",
        instructions,
        "--responses",
        responses,
        "--output",
        work / "pairs",
        "--min-g",
        "1",
        "--eval-fraction",
        "0.2",
        "--seed",
        "0",
    )
    return work / "pairs"


@pytest.fixture(scope="module")
def train_config(work, pairs_dir, base_checkpoint, tokenizer_dir) -> Path:
    config = {
        "include": [str(ROOT / "configs" / "base.yaml"), str(ROOT / "configs" / "model" / "smollm2_135m.yaml")],
        "lora": {"rank": 8, "alpha": 16.0},
        "mesh": {"data": 1, "fsdp": 1, "tensor": 1},
        "data": {
            "pairs_path": str(pairs_dir / "pairs.jsonl"),
            "eval_pairs_path": str(pairs_dir / "eval_pairs.jsonl"),
            "tokenizer_path": str(tokenizer_dir),
            "max_length": 256,
            "global_batch_size": BATCH_PAIRS,
        },
        "loss": {
            "loss_type": ["rpo"],
            "loss_weights": [1.0],
            "beta": BETA,
            "rpo_gamma": GAMMA,
            "rpo_margin_mode": "inside",
        },
        "optim": {"learning_rate": 1.0e-3, "schedule": "constant", "warmup_ratio": 0.0},
        "train": {
            "steps": TRAIN_STEPS,
            "reference_mode": "lora_base",
            "init_checkpoint": str(base_checkpoint),
            "output_dir": str(work / "run"),
        },
        "checkpoint": {"save_every": TRAIN_STEPS, "keep_last": 1},
    }
    path = work / "train.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def run_dir(train_config) -> Path:
    rpo_jax("train", "--config", train_config)
    return Path(json.loads(train_config.read_text())["train"]["output_dir"])


def test_generate_samples_differ_per_prompt(responses, instructions):
    rows = read_jsonl(responses)
    keys = [r["key"] for r in read_jsonl(instructions)]
    assert [(r["key"], r["sample_id"]) for r in rows] == [(k, s) for k in keys for s in range(NUM_SAMPLES)]
    assert all(0 < r["num_tokens"] <= MAX_NEW_TOKENS and r["finish_reason"] in ("eos", "length") for r in rows)
    for key in keys:
        texts = [r["response"] for r in rows if r["key"] == key]
        assert len(set(texts)) > 1, f"prompt {key}: {NUM_SAMPLES} samples at temperature 1 are identical"


def test_build_pairs_rpo_invariants(pairs_dir, instructions, responses):
    """Every pair re-checked here from the raw files: chosen satisfies all K listed constraints, rejected fails
    exactly g, the listed constraints are the originals with the chosen's failures reversed, provenance points at
    the sampled rows."""
    rows = {str(r["key"]): r for r in read_jsonl(instructions)}
    sampled = read_jsonl(responses)
    train, held_out = read_jsonl(pairs_dir / "pairs.jsonl"), read_jsonl(pairs_dir / "eval_pairs.jsonl")
    stats = json.loads((pairs_dir / "stats.json").read_text())
    assert len(train) >= BATCH_PAIRS and held_out, (len(train), len(held_out))
    assert not {p["group_id"] for p in train} & {p["group_id"] for p in held_out}
    assert stats["emitted_records"] == len(train) + len(held_out) == sum(stats["pairs_by_g"].values())
    assert stats["split"] == {"train": len(train), "eval": len(held_out)}
    assert sum(stats["responses"]["by_outcome"].values()) == stats["responses"]["total"] == len(sampled)

    for pair in train + held_out:
        prov = pair["provenance"]
        row = rows[pair["group_id"]]
        assert pair["recipe"] == "rpo" and prov["instruction_id"] == pair["group_id"] and prov["min_g"] == 1
        originals = cons.constraints_from_ifeval_row(row, "ifeval", 0)
        chosen_seq, rejected_seq = pair["sequences"]
        assert chosen_seq["messages"] == rejected_seq["messages"]  # one prompt x_S, two responses
        sides = {}
        for side, seq in (("chosen", chosen_seq), ("rejected", rejected_seq)):
            source = sampled[prov[side]["line"] - 1]
            assert prov[side]["file"] == str(responses)
            assert prov[side]["response_id"] == f"{source['key']}#{source['sample_id']}"
            assert str(source["key"]) == pair["group_id"] and source["response"] == seq["response"]
            verdicts = [cons.check(c, seq["response"], row["prompt"]) for c in originals]
            assert prov[side]["verdicts"] == {f"c{k}": v for k, v in enumerate(verdicts)}
            sides[side] = verdicts
        g = sum(a != b for a, b in zip(sides["chosen"], sides["rejected"]))
        assert pair["margin"] == prov["g"] == g >= 1
        # x_S lists each constraint as is where the chosen passes it, reversed where it fails.
        listed = [c if ok else cons.reverse(c) for c, ok in zip(originals, sides["chosen"])]
        assert [(p["type"], p["reversed"]) for p in prov["prompt_constraints"]] == [
            (c.type, not ok) for c, ok in zip(listed, sides["chosen"])
        ]
        prompt = chosen_seq["messages"][-1]["content"]
        if all(sides["chosen"]):
            assert prompt == row["prompt"]
        else:
            numbered = "\n".join(f"{i}. {cons.render(c)}" for i, c in enumerate(listed, 1))
            assert prompt == f"{row['prompt']}\n\n{OVERRIDE_HEADER}\n{numbered}"
        assert all(cons.check(c, chosen_seq["response"], row["prompt"]) for c in listed)
        assert sum(not cons.check(c, rejected_seq["response"], row["prompt"]) for c in listed) == g


def test_train_lora_rpo_on_smollm2(run_dir, tokenizer_dir):
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(TRAIN_STEPS))
    for r in records:
        assert all(math.isfinite(r[k]) for k in ("loss", "grad_norm", "rewards/margins", "logps/chosen"))
        assert r["nonfinite_total"] == 0 and not r["skipped"]
    step0 = records[0]
    # Policy == reference at step 0 (LoRA B = 0, reference = the base with adapters off): every reward is ~0,
    # so each RPO loss is softplus(beta*gamma*g) ("ln 2 plus the margin"); g varies little, so the batch mean
    # is softplus at the mean g to within 1e-5.
    assert abs(step0["rewards/chosen"]) < 1e-3 and abs(step0["rewards/rejected"]) < 1e-3
    expected = math.log1p(math.exp(BETA * GAMMA * step0["rpo/g_mean"]))
    assert step0["rpo/g_mean"] >= 1 and abs(step0["loss"] - expected) < 1e-4, (step0["loss"], expected)
    assert records[-1]["rewards/margins"] != 0.0  # the adapters moved the policy away from the reference

    steps = [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()]
    assert steps == [str(TRAIN_STEPS)]
    assert (run_dir / "report.png").stat().st_size > 0
    manifest = json.loads((run_dir / "data" / "train" / "manifest.json").read_text())
    assert manifest["counts"]["examples"] >= BATCH_PAIRS

    hf = run_dir / "hf"
    config = json.loads((hf / "config.json").read_text())
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576 and config["tie_word_embeddings"]
    assert (hf / "tokenizer.json").read_bytes() == (tokenizer_dir / "tokenizer.json").read_bytes()
    # LoRA is merged on export: an adapted projection differs from the base, an untouched norm does not.
    from safetensors import safe_open

    with safe_open(hf / "model.safetensors", "np") as got, safe_open(tokenizer_dir / "model.safetensors", "np") as base:
        assert not (
            got.get_tensor("model.layers.0.self_attn.q_proj.weight")
            == base.get_tensor("model.layers.0.self_attn.q_proj.weight")
        ).all()
        assert (got.get_tensor("model.norm.weight") == base.get_tensor("model.norm.weight")).all()


def test_eval_ifeval_on_trained_model(work, run_dir, tokenizer_dir):
    out = work / "ifeval.json"
    rpo_jax(
        "eval",
        "--suite",
        "ifeval",
        "--checkpoint",
        run_dir / "hf",
        "--tokenizer",
        tokenizer_dir,
        "--limit",
        IFEVAL_LIMIT,
        "--max-new-tokens",
        "16",
        "--batch-size",
        IFEVAL_LIMIT,
        "--output",
        out,
    )
    results = json.loads(out.read_text())
    first = read_jsonl(IFEVAL)[:IFEVAL_LIMIT]
    assert results["num_prompts_scored"] == IFEVAL_LIMIT and results["num_prompts_without_response"] == 0
    assert results["num_instructions_scored"] == sum(len(r["instruction_id_list"]) for r in first)
    for level in ("prompt", "inst"):
        strict, loose = results[f"{level}_level_strict_acc"], results[f"{level}_level_loose_acc"]
        assert 0.0 <= strict <= loose <= 1.0


def test_eval_pairs_trained_against_base(work, run_dir, base_checkpoint, train_config):
    out = work / "pairs_eval.json"
    rpo_jax(
        "eval",
        "--suite",
        "pairs",
        "--checkpoint",
        run_dir / "hf",
        "--reference",
        base_checkpoint,
        "--pairs",
        run_dir / "data" / "eval",
        "--config",
        train_config,
        "--batch-size",
        "2",
        "--output",
        out,
    )
    results = json.loads(out.read_text())
    assert 0.0 <= results["rewards/accuracies"] <= 1.0
    assert all(math.isfinite(results[k]) for k in ("loss", "rewards/margins", "rewards/chosen", "logps/chosen"))
    assert results["rewards/margins"] != 0.0 and results["loss"] > 0.0  # trained policy != its base
    assert results["rpo/g_mean"] >= 1
