"""`rpo-jax bench --compare generate` on a tiny HF Llama: every side measured in one run, the JSON complete and its
ratios computed from the measured rates (no timing thresholds)."""

import argparse
import json
import math
import shutil
from pathlib import Path

import pytest
from llama_hf_fixtures import params_and_hf_folder

from benchmarks import bench
from rpo_jax.config.schema import ModelConfig

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "data_pipeline/assets/tokenizers/llama2-sp-32k"
CHAT_TEMPLATE = REPO / "data_pipeline/assets/chat_templates/llama3.jinja"


@pytest.mark.torch
def test_compare_generate_measures_every_side_and_writes_complete_json(tmp_path, capsys):
    tokenizer = tmp_path / "tokenizer"
    shutil.copytree(TOKENIZER, tokenizer)
    shutil.copy(CHAT_TEMPLATE, tokenizer / "chat_template.jinja")
    cfg = ModelConfig(
        vocab_size=32000,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
    )
    _, hf, _ = params_and_hf_folder(cfg, tmp_path / "model", seed=0, tokenizer_dir=tokenizer)
    out = tmp_path / "generate.json"
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    argv = ["--compare", "generate", "--hf-dir", str(hf), "--num-prompts", "3", "--decode-batch", "2"]
    assert bench.run(parser.parse_args([*argv, "--max-new-tokens", "4", "--output", str(out)])) == 0

    r = json.loads(out.read_text())
    gen, ev, hf_side = r["rpo_jax_generate"], r["rpo_jax_eval"], r["transformers"]
    assert r["num_prompts"] == 3 and len(r["prompt_lengths"]) == 3
    for side in (gen["cold"], gen["warm"], ev["after_generate"], ev["warm"], hf_side):
        assert side["tokens_per_s"] == pytest.approx(side["generated_tokens"] / side["seconds"])
        assert 0 < side["generated_tokens"] <= 3 * 4
    assert gen["cold"]["compiled_programs"] >= len(gen["batches_by_prompt_length"]) > 0
    assert gen["warm"]["compiled_programs"] == 0 and ev["warm"]["compiled_programs"] == 0
    assert sum(gen["batches_by_prompt_length"].values()) == 2  # 3 prompts in batches of 2
    assert r["speedup_generate_vs_transformers"] == pytest.approx(gen["warm"]["tokens_per_s"] / hf_side["tokens_per_s"])
    assert r["eval_vs_generate"] == pytest.approx(ev["warm"]["tokens_per_s"] / gen["warm"]["tokens_per_s"])
    assert 0 <= r["greedy_rows_matching_transformers"] <= 3
    assert all(math.isfinite(x) and x > 0 for x in (gen["load_seconds"], hf_side["load_seconds"]))
    assert "transformers.generate" in capsys.readouterr().out
