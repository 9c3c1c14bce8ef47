"""`rpo-jax eval`: IF suites and any prompt file on given responses (per-prompt verdicts, summaries, missing rows,
language scope, one-line errors), the ifbench refusal of uncheckable ids, and the pairs suite on a tiny model
given as params checkpoints or as HF folders."""

import json
import re
from pathlib import Path

import pytest
from llama_hf_fixtures import params_and_hf_folder
from trainer_fixtures import DEFAULT_PAIRS, TOKENIZER, write_config

from data_pipeline.constraints import ConstraintError
from rpo_jax.cli import main
from rpo_jax.config.loading import load_config

ASSETS = Path(__file__).resolve().parents[1] / "data_pipeline" / "assets"


def test_ifeval_on_given_responses_reproduces_gpt4(tmp_path, capsys):
    out, per_prompt = tmp_path / "results.json", tmp_path / "verdicts.jsonl"
    gpt4 = str(ASSETS / "ifeval" / "input_response_data_gpt4_20231107_145030.jsonl")
    argv = ["eval", "--suite", "ifeval", "--responses", gpt4, "--output", str(out), "--per-prompt", str(per_prompt)]
    # One prompt has no response and one response has no prompt: an error until allowed.
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "[2785]" in err and "--allow-missing" in err
    assert main([*argv, "--allow-missing"]) == 0
    results = json.loads(out.read_text())
    assert results["prompt_level_strict_acc"] == pytest.approx(0.7722, abs=0.002)
    assert results["prompt_level_loose_acc"] == pytest.approx(0.7981, abs=0.002)
    assert results["by_instruction_id"]["punctuation:no_comma"]["instructions"] > 0
    assert set(results["by_num_constraints"]) == {"1", "2", "3"}
    printed = capsys.readouterr().out
    assert (
        "prompt_level_strict_acc" in printed
        and "by instruction id:" in printed
        and "by number of constraints:" in printed
    )
    lines = [json.loads(line) for line in per_prompt.read_text().splitlines()]
    assert len(lines) == 541 and [row for row in lines if not row["has_response"]][0]["key"] == 2785
    first = lines[0]
    assert first["key"] == 1000 and [i["id"] for i in first["instructions"]][0] == "punctuation:no_comma"
    assert first["instructions"][0]["strict"] in (True, False) and "loose" in first["instructions"][0]


def _write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_any_prompt_file_with_languages_and_skip_bad(tmp_path, capsys):
    prompts = _write_rows(
        tmp_path / "mine.jsonl",
        [
            {"key": "a", "prompt": "Say hi.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
            {"key": "b", "prompt": "Di hola.", "instruction_id_list": ["es:punctuation:no_comma"], "kwargs": [{}]},
            {
                "key": "c",
                "prompt": "挨拶して",
                "language": "ja",
                "instruction_id_list": ["punctuation:no_comma"],
                "kwargs": [{}],
            },
        ],
    )
    responses = _write_rows(
        tmp_path / "r.jsonl",
        [
            {"prompt": "Say hi.", "response": "Hi there."},
            {"prompt": "Di hola.", "response": "Hola, amigo."},
            {"prompt": "挨拶して", "response": "こんにちは、元気です。"},
        ],
    )
    argv = ["eval", "--prompts", str(prompts), "--responses", str(responses)]
    assert main(argv) == 2  # the Japanese row is refused, not judged by the ASCII-comma rule
    err = capsys.readouterr().err
    assert "mine.jsonl:3: field 'instruction_id_list[0]'" in err and "'ja'" in err and "--skip-bad" in err
    out = tmp_path / "out.json"
    # The skipped prompt's response is skipped with it, not "a response without a prompt": no --allow-missing.
    assert main([*argv, "--skip-bad", "--output", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["num_prompts_scored"] == 2 and results["prompt_level_strict_acc"] == 0.5
    assert results["prompts_skipped_bad_by_reason"] == {"unsupported_language": 1}
    assert results["prompt_keys_skipped_bad"] == ["c"] and results["response_lines_skipped"] == [3]
    assert results["num_responses_without_prompt"] == 0
    assert "skipped 1 bad prompt(s) (unsupported_language: 1)" in capsys.readouterr().out
    # --allow-missing still means only "no response given": a response truly missing is an error without it.
    _write_rows(responses, [{"prompt": "Say hi.", "response": "Hi there."}])
    assert main([*argv, "--skip-bad"]) == 2
    assert "1 prompt(s) of" in capsys.readouterr().err
    assert main([*argv, "--skip-bad", "--allow-missing", "--output", str(out)]) == 0
    assert json.loads(out.read_text())["prompt_keys_without_response"] == ["b"]


def test_user_errors_are_one_line(tmp_path, capsys):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"key": 1,\n')
    errors = []
    for argv in (
        ["eval", "--prompts", str(tmp_path / "nope.jsonl"), "--responses", str(bad_json)],
        ["eval", "--prompts", str(bad_json), "--responses", str(bad_json)],
        ["eval", "--responses", str(bad_json)],
        ["eval", "--suite", "pairs"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        # The command is named once, by the CLI: the message itself does not start with it again.
        message = err.removeprefix("rpo-jax eval: error: ")
        assert message != err and not message.startswith(("rpo-jax", "eval")), err
        errors.append(err)
    # A malformed line is named by file, line and the column where the JSON breaks.
    assert f"{bad_json}:1: field '<line>': malformed JSON at column 11: Expecting" in errors[1], errors[1]
    assert "--prompts" in errors[2] or "--suite" in errors[2]
    assert "--suite pairs needs --checkpoint, --pairs and --config" in errors[3]


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
    runs = (("ckpt", policy_ckpt, reference_ckpt), ("hf", policy_hf, reference_hf), ("self", policy_ckpt, policy_ckpt))
    for name, policy, reference in runs:
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
    assert results[0]["rewards/ties"] == 0.0
    # Policy == reference (a run's step 0): every margin is an exact tie, counted half right - chance, not 0.
    assert results[2]["rewards/ties"] == 1.0 and results[2]["rewards/accuracies"] == 0.5
