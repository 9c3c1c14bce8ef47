"""The RPO paper's conversational setting end to end with a tiny model (issue #28): `build-instructions` spreads
constraints over a system prompt and two turns -> `generate` answers turn by turn, the model's own first answer in
context -> `build-pairs` builds RPO pairs at the last turn with that answer fixed as context -> `train` two steps ->
`eval` generates turn by turn from the trained model and judges every turn of the held-out conversations."""

from __future__ import annotations

import json
import shutil

import pytest
from llama_hf_fixtures import params_and_hf_folder
from trainer_fixtures import ROOT, TOKENIZER, write_config

from rpo_jax.cli import main
from rpo_jax.config.loading import load_config

TEMPLATE = ROOT / "data_pipeline" / "assets" / "chat_templates" / "llama3.jinja"
# A random model's final answers all get the same verdicts (no pair), so each conversation's final answer is replaced
# by one of these, which differ on several constraint types; the first answer stays the model's own.
FINAL_ANSWERS = (
    "<<A TITLE>>\nTHIS ANSWER USES CAPITALS ON PURPOSE. IT IS SHORT. P.S. THAT IS ALL.",
    "a plain answer, in lowercase, with commas, and very few words",
    '"quoted answer with several words * one * two. Section 1 of it. Is there anything else I can help with?"',
)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_conversations_from_instructions_to_a_trained_model_judged_at_every_turn(tmp_path):
    instructions = tmp_path / "instructions"
    flags = ["--num-train", "4", "--num-heldout", "2", "--turns", "2", "--system-constraints", "1"]
    flags += ["--min-constraints", "2", "--max-constraints", "3", "--heldout-min-constraints", "2"]
    assert main(["build-instructions", "--output", str(instructions), *flags]) == 0

    config = write_config(tmp_path, steps=2, save_every=2, data={"eval_pairs_path": "", "eval_path": ""})
    _, base, _ = params_and_hf_folder(load_config(config).model, tmp_path / "base", seed=0, tokenizer_dir=TOKENIZER)
    shutil.copyfile(TEMPLATE, base / "chat_template.jinja")  # the SentencePiece tokenizer has no chat template
    samples = tmp_path / "samples.jsonl"
    generate = ["generate", "--checkpoint", str(base), "--tokenizer", str(base), "--max-new-tokens", "6"]
    args = ["--prompts", str(instructions / "train_prompts.jsonl"), "--output", str(samples), "--num-samples", "3"]
    assert main([*generate, *args, "--batch-size", "16"]) == 0
    rows = read_jsonl(samples)
    assert len(rows) == 12 and all(len(row["responses"]) == 2 for row in rows)
    first_answer = {row["key"]: row["responses"][0] for row in rows}
    assert all(row["responses"][0] == first_answer[row["key"]] for row in rows)  # one history per conversation

    scripted = tmp_path / "scripted.jsonl"
    for row in rows:
        row["response"] = FINAL_ANSWERS[row["sample_id"]]
        row["responses"] = [*row["responses"][:-1], row["response"]]
    scripted.write_text("".join(json.dumps(row) + "\n" for row in rows))
    pairs = tmp_path / "pairs"
    build = ["build-pairs", "--recipe", "rpo", "--input", str(instructions / "train_instructions.jsonl")]
    assert main([*build, "--responses", str(scripted), "--output", str(pairs), "--min-g", "1"]) == 0
    records = read_jsonl(pairs / "pairs.jsonl")
    assert records
    for record in records:
        for sequence in record["sequences"]:
            roles = [m["role"] for m in sequence["messages"]]
            assert roles == ["system", "user", "assistant", "user"], roles
            assert sequence["messages"][2]["content"] == first_answer[record["group_id"]]
            assert sequence["response"] in FINAL_ANSWERS

    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--set", f"data.pairs_path={pairs / 'pairs.jsonl'}"]) == 0
    assert (run / "hf" / "config.json").is_file()

    results = tmp_path / "eval.json"
    evaluate = ["eval", "--prompts", str(instructions / "heldout_multiturn.jsonl"), "--checkpoint", str(run / "hf")]
    evaluate += ["--tokenizer", str(run / "hf"), "--max-new-tokens", "6", "--output", str(results)]
    assert main([*evaluate, "--per-prompt", str(tmp_path / "verdicts.jsonl")]) == 0
    by_turn = json.loads(results.read_text())["by_turn"]
    assert sorted(by_turn) == ["1", "2"] and all(turn["all"]["num_prompts_scored"] == 2 for turn in by_turn.values())
    verdicts = read_jsonl(tmp_path / "verdicts.jsonl")
    assert sorted(v["turn"] for v in verdicts) == [1, 1, 2, 2]
