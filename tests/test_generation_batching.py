"""How `rpo-jax generate` and `eval` batch a prompt file: longest prompts first, each batch padded to a bucket
length, one compiled program per bucket, answers written in file order and (greedy) equal to answering each
prompt alone."""

import dataclasses
import json
from pathlib import Path

import pytest
from llama_hf_fixtures import params_and_hf_folder
from serve_fixtures import counted_compiles

from rpo_jax.config.schema import ModelConfig
from rpo_jax.generate import generation
from rpo_jax.generate.prompt_rows import Answer, PromptRow, answer_rounds

TOKENIZER = Path(__file__).resolve().parents[1] / "data_pipeline/assets/tokenizers/llama2-sp-32k"
CFG = ModelConfig(
    vocab_size=32000,  # the shipped tokenizer's
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    initializer_range=0.05,
)
# Words per prompt (one token each, after BOS): the longest four in bucket 128, the shortest two in 64, mixed up.
PROMPT_WORDS = [3, 90, 5, 70, 120, 4]


def test_prompt_buckets_double_from_64_and_stop_where_the_new_tokens_still_fit():
    assert [generation.prompt_bucket(n, 32, 2048) for n in (1, 64, 65, 128, 129, 700)] == [64, 64, 128, 128, 256, 1024]
    assert generation.prompt_bucket(1500, 500, 2048) == 1548  # 2048 would leave no room for 500 new tokens


def test_a_round_is_batched_longest_first_and_answered_in_file_order():
    rows = [PromptRow(key, i, (), ({"role": "user", "content": key},)) for i, key in enumerate(["bb", "a", "ddd", "c"])]
    batches = []

    def answer(jobs, batch_index):
        batches.append([job.row.key for job in jobs])
        return [Answer(job.row.key.upper(), "eos", 1) for job in jobs]

    results = list(answer_rounds(rows, 1, 2, answer, lambda job: len(job.row.key)))
    assert batches == [["ddd", "bb"], ["a", "c"]]  # "a" and "c" tie: file order kept
    assert [(job.row.key, answer.text) for job, answer in results] == [
        ("bb", "BB"),
        ("a", "A"),
        ("ddd", "DDD"),
        ("c", "C"),
    ]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    _, hf, _ = params_and_hf_folder(CFG, folder, seed=5, tokenizer_dir=TOKENIZER)
    return generation.load_for_sampling(hf, hf, raw_prompt=True)


def write_prompts(path: Path) -> Path:
    rows = [{"key": f"p{i}", "prompt": " ".join(["a"] * n)} for i, n in enumerate(PROMPT_WORDS)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


class RecordingSampler:
    """The loaded sampler, noting (rows, padded prompt length P, longest prompt) of every batch it decodes."""

    def __init__(self, sampler):
        self.sampler, self.batches = sampler, []

    def generate(self, prompts, params, key):
        self.batches.append((len(prompts), params.prompt_length_multiple, max(map(len, prompts))))
        return self.sampler.generate(prompts, params, key)


def test_batches_compile_once_per_bucket_and_answer_as_each_prompt_alone(tmp_path, loaded):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    recorder = RecordingSampler(loaded.sampler)
    model = dataclasses.replace(loaded, sampler=recorder)
    settings = generation.GenerationSettings(temperature=0.0, max_new_tokens=6, batch_size=2, raw_prompt=True)

    summary = generation.generate_with_model(model, prompts, tmp_path / "batched.jsonl", settings)
    assert summary["batches_by_prompt_length"] == {"64": 1, "128": 2}
    assert [(rows, p) for rows, p, _ in recorder.batches] == [(2, 128), (2, 128), (2, 64)]
    assert all(longest <= p for _, p, longest in recorder.batches)
    with counted_compiles() as compiled:  # the same file again: every bucket's program is compiled already
        generation.generate_with_model(model, prompts, tmp_path / "again.jsonl", settings)
    assert compiled == []

    alone = dataclasses.replace(settings, batch_size=1)
    generation.generate_with_model(loaded, prompts, tmp_path / "alone.jsonl", alone)
    batched, single = (
        [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
        for name in ("batched.jsonl", "alone.jsonl")
    )
    assert [row["key"] for row in batched] == [f"p{i}" for i in range(len(PROMPT_WORDS))]
    assert batched == single and (tmp_path / "again.jsonl").read_text() == (tmp_path / "batched.jsonl").read_text()
    assert all(row["num_tokens"] > 0 for row in batched)
