"""`rpo-jax eval`: IF suites on given responses, the ifbench refusal of uncheckable ids, and the pairs suite on a
tiny model given as params checkpoints or as HF folders."""

import json
import re
from pathlib import Path

import pytest
from llama_hf_fixtures import params_and_hf_folder
from trainer_fixtures import DEFAULT_PAIRS, TOKENIZER, write_config

from data_pipeline.constraints import ConstraintError
from rpo_jax.cli import main
from rpo_jax.config_loading import load_config

ASSETS = Path(__file__).resolve().parents[1] / "data_pipeline" / "assets"


def test_ifeval_on_given_responses_reproduces_gpt4(tmp_path, capsys):
    out = tmp_path / "results.json"
    code = main(
        [
            "eval",
            "--suite",
            "ifeval",
            "--responses",
            str(ASSETS / "ifeval" / "input_response_data_gpt4_20231107_145030.jsonl"),
            "--output",
            str(out),
        ]
    )
    assert code == 0
    results = json.loads(out.read_text())
    assert results["prompt_level_strict_acc"] == pytest.approx(0.7722, abs=0.005)
    assert results["prompt_level_loose_acc"] == pytest.approx(0.7981, abs=0.005)
    assert "prompt_level_strict_acc" in capsys.readouterr().out


def test_ifbench_names_the_ids_it_cannot_check(tmp_path, capsys):
    # Scored runs (--skip-unsupported) are tested in test_ifbench_score.py.
    argv = ["eval", "--suite", "ifbench", "--responses", str(ASSETS / "ifbench" / "sample_output.jsonl")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(r"'ratio:stop_words' on 12 prompt.*'words:start_verb' on 6 prompt", err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(ConstraintError):  # --debug shows the real exception
        main([*argv, "--debug"])


def test_pairs_suite_on_hf_folders_equals_params_checkpoints(tmp_path):
    from data_pipeline.records.prepare import ensure_shards
    from data_pipeline.records.truncation import TruncationSettings

    config = write_config(tmp_path)
    cfg = load_config(config)
    ensure_shards(
        DEFAULT_PAIRS / "eval_pairs.jsonl",
        TOKENIZER,
        tmp_path / "eval",
        TruncationSettings(max_length=cfg.data.max_length, mode=cfg.data.truncation),
    )
    policy_ckpt, policy_hf, _ = params_and_hf_folder(cfg.model, tmp_path / "policy", seed=1)
    reference_ckpt, reference_hf, _ = params_and_hf_folder(cfg.model, tmp_path / "reference", seed=2)
    results = []
    for name, policy, reference in (("ckpt", policy_ckpt, reference_ckpt), ("hf", policy_hf, reference_hf)):
        out = tmp_path / f"{name}.json"
        assert (
            main(
                [
                    "eval",
                    "--suite",
                    "pairs",
                    "--checkpoint",
                    str(policy),
                    "--reference",
                    str(reference),
                    "--pairs",
                    str(tmp_path / "eval"),
                    "--config",
                    str(config),
                    "--output",
                    str(out),
                ]
            )
            == 0
        )
        results.append(json.loads(out.read_text()))
    assert results[0] == results[1]
    assert results[0]["rewards/margins"] != 0.0 and 0.0 < results[0]["rewards/accuracies"] < 1.0
