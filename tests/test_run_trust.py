"""A training run a person can trust, through the real CLI: one run per output folder, the final step evaluated,
a closing summary, damaged checkpoints skipped with a reason, `--resume STEP`, moved run folders, step-checkpoint
export, the chat files of the exported hf/, and impossible settings or bad inputs refused in one line."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file
from trainer_fixtures import DEFAULT_PAIRS, ROOT, cli_env, run_train, write_config

pytestmark = pytest.mark.slow

STEPS = 4


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_steps(run_dir) -> list[int]:
    return [r["step"] for r in records(run_dir) if "loss" in r]


def eval_steps(run_dir) -> list[int]:
    return [r["step"] for r in records(run_dir) if "eval/loss" in r]


def rpo_jax(*args: str, devices: int = 8) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "rpo_jax.cli", *args]
    return subprocess.run(command, env=cli_env(devices), cwd=ROOT, capture_output=True, text=True, timeout=300)


def one_error_line(result: subprocess.CompletedProcess, *needles: str) -> str:
    """The run failed with exit code 2 and a single `rpo-jax ...: error:` line, no traceback."""
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("train:")]
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("rpo-jax train: error: ") and all(n in lines[0] for n in needles), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A 4-step run whose data lives in its own folder (<output_dir>/data), a checkpoint after every step and
    held-out evaluation every 3 steps (so the last step is not a multiple of eval_every)."""
    tmp = tmp_path_factory.mktemp("finished")
    config = write_config(
        tmp,
        steps=STEPS,
        save_every=1,
        eval_every=3,
        data={"train_path": "", "eval_path": ""},
    )
    result = run_train(config)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp, config, result


def copy_run(finished, tmp_path):
    """The finished run folder copied to `tmp_path/run` (data included); returns it."""
    shutil.copytree(finished[0] / "run", tmp_path / "run")
    return tmp_path / "run"


def test_last_step_is_evaluated_and_the_run_summarised(finished):
    tmp, _, result = finished
    run = tmp / "run"
    assert eval_steps(run) == [0, 3, 4]  # eval_every=3 does not divide 4: the final model is still evaluated
    out = result.stdout
    assert "held-out at step 3: loss" in out and "held-out at step 4: loss" in out
    assert f"run finished: {STEPS} of {STEPS} steps in " in out
    for expected in (run / "checkpoints" / str(STEPS), run / "hf", run / "metrics.jsonl", run / "report.png"):
        assert str(expected) in out
    assert "final train step 3: loss" in out
    # 75% of the shipped pairs are longer than this config's max_length (256): said at run time.
    assert "of the pairs in" in out and "longer than data.max_length=256 tokens and were dropped" in out
    assert re.search(r"examples, dropped \d+ \(\w+: \d+(, \w+: \d+)*\)\n", out), out  # not a dict
    # Step 0 is policy == reference: every held-out margin is an exact tie, which held-out accuracy counts as half
    # right (chance), while the training metric keeps TRL's strict rule.
    step0 = next(r for r in records(run) if r["step"] == 0 and "eval/loss" in r)
    assert step0["eval/rewards/ties"] == 1.0 and step0["eval/rewards/accuracies"] == 0.5
    assert "held-out at step 0: loss" in out and "reward accuracy 0.500" in out


def test_second_run_into_the_same_folder_is_refused(finished):
    tmp, config, _ = finished
    before = (tmp / "run" / "metrics.jsonl").read_text()
    result = run_train(config)
    one_error_line(result, "already holds a run", "--resume", "--overwrite")
    assert (tmp / "run" / "metrics.jsonl").read_text() == before


def test_overwrite_replaces_the_previous_run(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    (run / "notes.txt").write_text("mine")
    result = run_train(finished[1], "--output-dir", str(run), "--overwrite", "--steps", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--overwrite: removed the previous run's checkpoints/" in result.stdout and "kept notes.txt" in result.stdout
    assert train_steps(run) == [0, 1] and sorted(p.name for p in (run / "checkpoints").iterdir()) == ["1", "2"]
    assert (run / "notes.txt").read_text() == "mine" and (run / "data" / "train" / "manifest.json").is_file()


def test_resume_on_an_empty_folder_says_it_starts_fresh(finished, tmp_path):
    data = finished[0] / "run" / "data"  # already tokenized: no need to do it again here
    paths = ["--set", f"data.train_path={data / 'train'}", "--set", f"data.eval_path={data / 'eval'}"]
    result = run_train(finished[1], "--output-dir", str(tmp_path / "fresh"), "--resume", "--steps", "1", *paths)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"--resume: no checkpoint in {tmp_path / 'fresh' / 'checkpoints'}; starting fresh" in result.stdout


def test_damaged_checkpoints_are_skipped_with_their_reason(finished, tmp_path):
    """Step 4 truncated, step 3 zeroed: --resume names both and continues from step 2 to the same result."""
    run = copy_run(finished, tmp_path)

    def largest_file(step):
        files = [p for p in (run / "checkpoints" / str(step) / "state").rglob("*") if p.is_file()]
        return max(files, key=lambda p: p.stat().st_size)

    truncated, zeroed = largest_file(4), largest_file(3)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    zeroed.write_bytes(bytes(zeroed.stat().st_size))
    result = run_train(finished[1], "--output-dir", str(run), "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("--resume: step 4"))
    assert "step 3 (" in line and "cannot be read back; resuming from step 2" in line
    assert "resumed from step 2 of 4" in result.stdout
    assert sorted(p.name for p in (run / "set_aside_checkpoints").iterdir()) == ["3", "4"]
    assert train_steps(run) == list(range(STEPS))
    original, resumed = load_file(finished[0] / "run/hf/model.safetensors"), load_file(run / "hf/model.safetensors")
    for name in original:
        np.testing.assert_array_equal(resumed[name], original[name], err_msg=name)


def test_resume_from_a_named_step_and_from_a_moved_folder(finished, tmp_path):
    """The run folder is copied elsewhere (its data inside, so every data path differs) and resumed from step 2
    without --allow-config-change; later checkpoints are set aside; the result equals the uninterrupted run."""
    run = copy_run(finished, tmp_path)
    result = run_train(finished[1], "--output-dir", str(run), "--resume", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"--resume 2: later checkpoints (step 4, 3) moved to {run / 'set_aside_checkpoints'}" in result.stdout
    assert "resumed from step 2 of 4" in result.stdout
    assert eval_steps(run) == [0, 3, 4]
    original, resumed = load_file(finished[0] / "run/hf/model.safetensors"), load_file(run / "hf/model.safetensors")
    for name in original:
        np.testing.assert_array_equal(resumed[name], original[name], err_msg=name)
    missing = run_train(finished[1], "--output-dir", str(run), "--resume", "7")
    one_error_line(missing, "--resume 7: no complete checkpoint for that step", "(there are: 4, 3, 2, 1)")


def test_exported_hf_has_the_chat_template_and_all_eos_ids(finished, tmp_path):
    from transformers import AutoTokenizer, GenerationConfig

    run = finished[0] / "run"
    manifest = json.loads((run / "data" / "train" / "manifest.json").read_text())
    template = manifest["chat_template"]["text"]
    assert (run / "hf" / "chat_template.jinja").read_text() == template
    assert json.loads((run / "hf" / "tokenizer_config.json").read_text())["chat_template"] == template
    tokenizer = AutoTokenizer.from_pretrained(run / "hf")
    messages = [{"role": "user", "content": "Write a haiku about rivers."}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    used = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)
    assert rendered == used
    eos = GenerationConfig.from_pretrained(run / "hf").eos_token_id
    assert set(eos) == {manifest["tokenizer"]["eos_token_id"], manifest["tokenizer"]["end_of_turn_id"]}
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"key": "a", "prompt": messages[0]["content"]}) + "\n")
    command = ["generate", "--checkpoint", str(run / "hf"), "--tokenizer", str(run / "hf"), "--prompts", str(prompts)]
    result = rpo_jax(*command, "--output", str(tmp_path / "out.jsonl"), "--max-new-tokens", "4", devices=1)
    assert result.returncode == 0, result.stderr[-3000:]  # no --raw-prompt needed
    assert json.loads((tmp_path / "out.jsonl").read_text())["prompt"] == messages[0]["content"]


def test_export_hf_takes_a_training_step_checkpoint(finished, tmp_path):
    run = finished[0] / "run"
    step = run / "checkpoints" / str(STEPS)
    result = rpo_jax("export-hf", "--checkpoint", str(step), "--output", str(tmp_path / "hf"))
    assert result.returncode == 0, result.stderr[-3000:]
    exported, trained = load_file(tmp_path / "hf/model.safetensors"), load_file(run / "hf/model.safetensors")
    assert exported.keys() == trained.keys()
    for name in trained:
        np.testing.assert_array_equal(exported[name], trained[name], err_msg=name)
    for name in ("chat_template.jinja", "generation_config.json", "tokenizer_config.json", "tokenizer.model"):
        assert (tmp_path / "hf" / name).read_bytes() == (run / "hf" / name).read_bytes(), name
    result = rpo_jax("export-hf", "--checkpoint", str(run), "--output", str(tmp_path / "x"))
    assert result.returncode == 2 and f"pass --checkpoint {run / 'checkpoints' / str(STEPS)}" in result.stderr


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--steps", "0"], ["train.steps must be >= 1, got 0"]),
        (["--steps", "-5"], ["train.steps must be >= 1, got -5"]),
        (["--set", "optim.learning_rate=-1e-3"], ["optim.learning_rate must be > 0"]),
        (["--set", "checkpoint.save_every=0"], ["checkpoint.save_every must be >= 1, got 0"]),
        (["--set", "data.eval_pairs_path=/nonexistent/eval.jsonl"], ["data.eval_pairs_path=/nonexistent/eval.jsonl"]),
        (["--allow-config-change"], ["only apply with --resume"]),
    ],
)
def test_impossible_settings_fail_in_one_line_before_any_work(tmp_path, args, needles):
    config = write_config(tmp_path)
    one_error_line(run_train(config, *args), *needles)
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


def test_bad_inputs_fail_in_one_line(tmp_path):
    yaml_error = tmp_path / "broken.yaml"
    yaml_error.write_text("include: [base.yaml]\ntrain:\n  steps: [4\n")
    one_error_line(run_train(yaml_error), f"{yaml_error}:", "YAML syntax error")
    trl = tmp_path / "trl.jsonl"
    trl.write_text(json.dumps({"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}) + "\n")
    config = write_config(tmp_path, data={"pairs_path": str(trl)})
    one_error_line(run_train(config), f"{trl}:1:", "rpo-jax build-pairs --recipe dpo")
    not_utf8 = tmp_path / "pairs.jsonl"
    not_utf8.write_bytes((DEFAULT_PAIRS / "pairs.jsonl").read_bytes().split(b"\n")[0] + b"\n\xff\n")
    config = write_config(tmp_path, data={"pairs_path": str(not_utf8), "train_path": str(tmp_path / "d2")})
    one_error_line(run_train(config), f"{not_utf8}:2: field '<text>': not UTF-8: byte 0xff")
