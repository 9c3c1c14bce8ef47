"""Tokenization of pair records: templates, prefix/BOS/end-of-turn checks, loss spans, truncation, TRL parity, CLI."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import types
from pathlib import Path

import pytest

from data_pipeline.files import file_sha256
from data_pipeline.pairs.readers import read_pairs
from data_pipeline.pairs.schema import DataError
from data_pipeline.records.shards import read_manifest
from data_pipeline.records.tokenize import (
    DEFAULT_TOKENIZER_DIR,
    Dropped,
    PairTokenizer,
    load_tokenizer,
    resolve_chat_template,
)
from data_pipeline.records.truncation import TruncationSettings, truncate_group

PAIRS = Path(__file__).parent / "assets" / "pairs_small.jsonl"
BOS, EOS = 1, 2


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(DEFAULT_TOKENIZER_DIR)


@pytest.fixture(scope="module")
def template(tokenizer):
    return resolve_chat_template(tokenizer, None)[0]


@pytest.fixture(scope="module")
def records():
    return read_pairs(str(PAIRS))


def make_pair_tokenizer(tokenizer, template, max_length=4096, mode="drop", **kw):
    return PairTokenizer(tokenizer, template, TruncationSettings(max_length, mode, **kw))


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def fixture_rows(recipes: tuple[str, ...]) -> list[dict]:
    rows = [json.loads(line) for line in PAIRS.read_text(encoding="utf-8").splitlines()]
    return [r for r in rows if r["recipe"] in recipes]


def test_shipped_tokenizer_loads_with_full_vocab_and_provenance(tokenizer):
    assert len(tokenizer) == 32000 and tokenizer.bos_token_id == BOS and tokenizer.eos_token_id == EOS
    assert tokenizer.pad_token_id is None and tokenizer.chat_template is None
    # Same ids as sentencepiece itself (shared/data README: "Hello world" -> [22557, 1526]).
    assert tokenizer("Hello world", add_special_tokens=False)["input_ids"] == [22557, 1526]
    readme = (DEFAULT_TOKENIZER_DIR / "README.md").read_text()
    for name in ("tokenizer.model", "LICENSE"):
        assert file_sha256(DEFAULT_TOKENIZER_DIR / name) in readme
    assert "Apache License" in (DEFAULT_TOKENIZER_DIR / "LICENSE").read_text()


def test_template_is_llama3_layout_without_date_header(tokenizer, template):
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<s><|start_header_id|>system<|end_header_id|>\n\nS</s>"
        "<|start_header_id|>user<|end_header_id|>\n\nU</s><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_rows_decode_to_template_and_mask_only_final_turn(tokenizer, template, records):
    pair_tokenizer = make_pair_tokenizer(tokenizer, template)
    assert {r.recipe for r in records} == {"dpo", "rpo", "iopo"}
    for record in records:
        example = pair_tokenizer.tokenize(record, str(PAIRS), 0)
        assert len(example.rows) == {"dpo": 2, "rpo": 2, "iopo": 4}[record.recipe]
        for row, start, sequence in zip(example.rows, example.response_starts, record.sequences, strict=True):
            messages = [m.to_json() for m in sequence.messages]
            full = pair_tokenizer.render([*messages, {"role": "assistant", "content": sequence.response}], False)
            prompt = pair_tokenizer.render(messages, True)
            ids = row.tolist()
            assert tokenizer.decode(ids) == full
            assert tokenizer.decode(ids[:start]) == prompt
            # Scored span = the final assistant content + its end-of-turn (EOS here), nothing of the history.
            assert full == prompt + sequence.response + "</s>"
            span, expected = tokenizer.decode(ids[start:]), sequence.response + "</s>"
            # Decoding a slice on its own drops one leading space (Metaspace decoder), hence the second form.
            assert span == expected or (expected.startswith(" ") and span == expected[1:])
            assert ids[-1] == EOS and ids.count(BOS) == 1 and ids[0] == BOS
            assert sequence.messages[-1].content in tokenizer.decode(ids[:start])


def test_matches_trl_tokenization(tmp_path, tokenizer, template, records):
    pytest.importorskip("torch")
    trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")
    from datasets import Dataset
    from trl import DPOConfig

    tokenizer.chat_template = template  # TRL renders with the tokenizer's own template
    try:
        pair_tokenizer = make_pair_tokenizer(tokenizer, template)
        trl_rows, ours, pair_records = [], [], []
        for record in records:
            example = pair_tokenizer.tokenize(record, str(PAIRS), 0)
            # IOPO = two DPO pairs: x1: (x1,y1) > (x1,y2), x2: (x2,y2) > (x2,y1).
            for chosen, rejected in ((0, 1), (2, 3))[: len(record.sequences) // 2]:
                s_c, s_r = record.sequences[chosen], record.sequences[rejected]
                trl_rows.append(
                    {
                        "prompt": [m.to_json() for m in s_c.messages],
                        "chosen": [{"role": "assistant", "content": s_c.response}],
                        "rejected": [{"role": "assistant", "content": s_r.response}],
                    }
                )
                ours.append((example, chosen, rejected))
                pair_records.append(record)
        args = DPOConfig(output_dir=str(tmp_path / "trl"), max_length=4096, report_to=[], bf16=False, use_cpu=True)
        fake_trainer = types.SimpleNamespace(_tokenizer=tokenizer)
        trl_out = trl_dpo.DPOTrainer._prepare_dataset(
            fake_trainer, Dataset.from_list(trl_rows), tokenizer, args, "train"
        )
        assert len(trl_out) == len(ours)
        for trl_row, (example, chosen, rejected) in zip(trl_out, ours, strict=True):
            for index, key in ((chosen, "chosen_ids"), (rejected, "rejected_ids")):
                assert example.rows[index].tolist() == trl_row["prompt_ids"] + trl_row[key]
                assert example.response_starts[index] == len(trl_row["prompt_ids"])

        # keep_start truncation and its completion mask equal TRL's collator at a length that cuts responses.
        max_length = 110
        collator = trl_dpo.DataCollatorForPreference(pad_token_id=EOS, max_length=max_length, return_tensors="pt")
        short = make_pair_tokenizer(tokenizer, template, max_length, "keep_start")
        compared = 0
        for trl_row, (_, chosen, rejected), record in zip(trl_out, ours, pair_records, strict=True):
            example = short.tokenize(record, str(PAIRS), 0)
            if len(trl_row["prompt_ids"]) >= max_length:  # TRL drops these rows too
                assert isinstance(example, Dropped)
                continue
            batch = collator([trl_row])
            for g, index in enumerate((chosen, rejected)):
                n = int(batch["attention_mask"][g].sum())
                assert example.rows[index].tolist() == batch["input_ids"][g, :n].tolist()
                start = example.response_starts[index]
                mask = [0] * start + [1] * (n - start)
                assert mask == batch["completion_mask"][g, :n].tolist()
            compared += 1
        assert compared >= 4 and any(
            e.response_cut for e in [short.tokenize(r, "x", 0) for r in records] if not isinstance(e, Dropped)
        )
    finally:
        tokenizer.chat_template = None


def test_truncation_policies_on_handwritten_rows():
    prompts = [[BOS, 10, 11, 12, 13, 14], [BOS, 20, 21, 22]]
    responses = [[30, 31, 32, 33, EOS], [40, 41, EOS]]
    fits = truncate_group(prompts, responses, TruncationSettings(11, "drop"), BOS)
    assert not fits.prompt_cut and not fits.response_cut and list(fits.responses[0]) == responses[0]
    assert truncate_group(prompts, responses, TruncationSettings(10, "drop"), BOS) == "sequence_too_long"
    assert truncate_group(prompts, responses, TruncationSettings(6, "drop"), BOS) == "prompt_too_long"
    assert truncate_group(prompts, responses, TruncationSettings(6, "keep_start"), BOS) == "prompt_too_long"
    keep = truncate_group(prompts, responses, TruncationSettings(8, "keep_start"), BOS)
    assert [list(r) for r in keep.responses] == [[30, 31], [40, 41, EOS]] and keep.response_cut
    assert [list(p) for p in keep.prompts] == prompts
    # split, max_length 8, prompt budget 4: prompts cut from the left keeping BOS, then responses capped at 8-4=4.
    split = truncate_group(prompts, responses, TruncationSettings(8, "split", max_prompt_length=4), BOS)
    assert [list(p) for p in split.prompts] == [[BOS, 12, 13, 14], [BOS, 20, 21, 22]]
    assert [list(r) for r in split.responses] == [[30, 31, 32, 33], [40, 41, EOS]]
    assert split.prompt_cut and split.response_cut
    # Prompt cut alone is enough: responses stay whole.
    split_prompt_only = truncate_group(prompts, responses, TruncationSettings(9, "split", max_prompt_length=4), BOS)
    assert [list(r) for r in split_prompt_only.responses] == responses and not split_prompt_only.response_cut
    with pytest.raises(ValueError, match="only used by truncation='split'"):
        TruncationSettings(8, "drop", max_prompt_length=4)


def test_truncation_through_the_tokenizer(tokenizer, template, records):
    record = next(r for r in records if r.recipe == "rpo" and len(r.sequences[0].messages) == 4)
    full = make_pair_tokenizer(tokenizer, template).tokenize(record, "x", 1)
    longest, prompt_len = max(len(r) for r in full.rows), full.response_starts[0]
    max_length = prompt_len + 5
    assert isinstance(make_pair_tokenizer(tokenizer, template, max_length).tokenize(record, "x", 1), Dropped)
    keep = make_pair_tokenizer(tokenizer, template, max_length, "keep_start").tokenize(record, "x", 1)
    for row, full_row in zip(keep.rows, full.rows, strict=True):
        assert row.tolist() == full_row[:max_length].tolist()
    split = make_pair_tokenizer(tokenizer, template, prompt_len, "split").tokenize(record, "x", 1)
    budget = prompt_len // 2
    for row, start, full_row in zip(split.rows, split.response_starts, full.rows, strict=True):
        assert start == budget and row[0] == BOS and (row == BOS).sum() == 1 and len(row) <= prompt_len
        assert row[1:start].tolist() == full_row[prompt_len - budget + 1 : prompt_len].tolist()
        assert row[start:].tolist() == full_row[prompt_len : prompt_len + prompt_len - budget].tolist()
    assert longest > prompt_len


def test_chatml_bos_opens_every_turn(tokenizer, records):
    """SmolLM2's tokenizer has bos_token <|im_start|>, which ChatML puts at every turn: one BOS per turn is right
    there; a doubled BOS at the start is still an error."""
    chatml_tokenizer = copy.deepcopy(tokenizer)
    chatml_tokenizer.add_special_tokens({"bos_token": "<|im_start|>", "additional_special_tokens": ["<|im_end|>"]})
    bos, end = chatml_tokenizer.bos_token_id, chatml_tokenizer.convert_tokens_to_ids("<|im_end|>")
    turn = "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    chatml = (
        "{% for m in messages %}" + turn + "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    example = make_pair_tokenizer(chatml_tokenizer, chatml).tokenize(records[0], "p", 1)
    turns = len(records[0].sequences[0].messages) + 1
    for row, start in zip(example.rows, example.response_starts, strict=True):
        assert row[0] == bos and (row == bos).sum() == turns and bos not in row[start:]
        assert row[-2] == end  # the response span ends with <|im_end|> and the template's newline
    doubled = "{{ '<|im_start|>' }}" + chatml
    with pytest.raises(DataError, match="first and not doubled") as err:
        make_pair_tokenizer(chatml_tokenizer, doubled).tokenize(records[0], "p", 1)
    assert err.value.reason == "bos_count"


def test_broken_prefix_and_special_text_raise_naming_the_field(tokenizer, records):
    # Generation prompt ends with a space that the full rendering merges into the first response word.
    bad_template = (
        "{{ bos_token }}{% for m in messages %}{{ m['role'] + ': ' + m['content'] + eos_token }}"
        "{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    pair_tokenizer = make_pair_tokenizer(tokenizer, bad_template)
    with pytest.raises(DataError, match=r"pairs.jsonl:7: field 'sequences\[0\]'.*not a prefix") as err:
        pair_tokenizer.tokenize(records[0], "pairs.jsonl", 7)
    assert err.value.reason == "bad_prefix"
    no_bos = "{% for m in messages %}{{ m['content'] + eos_token }}{% endfor %}"
    with pytest.raises(DataError, match="exactly one BOS") as err:
        make_pair_tokenizer(tokenizer, no_bos).tokenize(records[0], "p", 1)
    assert err.value.reason == "bos_count"
    unclosed = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(DataError, match="end-of-turn") as err:
        make_pair_tokenizer(tokenizer, unclosed).tokenize(records[0], "p", 1)
    assert err.value.reason == "no_end_of_turn"
    record = records[0]
    poisoned = dataclasses.replace(
        record, sequences=(record.sequences[0], dataclasses.replace(record.sequences[1], response="a</s>b"))
    )
    with pytest.raises(DataError, match=re.escape("field 'sequences[1].response'")):
        make_pair_tokenizer(tokenizer, resolve_chat_template(tokenizer, None)[0]).tokenize(poisoned, "p", 3)


def tokenize(tmp_path: Path, input_path: Path, output: str = "shards", **overrides) -> int:
    """`rpo-jax tokenize` through the real command line; returns its exit code."""
    from rpo_jax.cli import main

    argv = [
        "tokenize",
        "--input",
        str(input_path),
        "--tokenizer",
        str(DEFAULT_TOKENIZER_DIR),
        "--output",
        str(tmp_path / output),
        "--max-length",
        "160",
    ]
    for key, value in overrides.items():
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return main(argv)


def test_cli_writes_manifest_counts_and_stable_fingerprint(tmp_path, capsys):
    rows = fixture_rows(("dpo", "rpo"))
    input_path = write_rows(tmp_path / "pairs.jsonl", rows)
    assert tokenize(tmp_path, input_path, "a", num_shards=2) == 0
    manifest = read_manifest(tmp_path / "a")
    counts = manifest["counts"]
    assert counts["input_rows"] == len(rows) == 5
    assert counts["examples"] + sum(counts["dropped"].values()) == 5
    assert counts["per_recipe"] == {"dpo": 1, "rpo": 1} and counts["dropped"] == {"prompt_too_long": 3}
    assert manifest["group_size"] == 2 and len(manifest["shards"]) == 2 and manifest["max_row_length"] <= 160
    assert json.loads(capsys.readouterr().out)["examples"] == 2
    assert tokenize(tmp_path, input_path, "b", max_length=1024, truncation="keep_start") == 0
    other = read_manifest(tmp_path / "b")
    assert other["counts"]["examples"] == 5 and other["fingerprint"] != manifest["fingerprint"]
    assert tokenize(tmp_path, input_path, "c", num_shards=3) == 0
    assert read_manifest(tmp_path / "c")["fingerprint"] == manifest["fingerprint"]  # sharding is layout only
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c", "pairs.jsonl"]  # no temp folders left
    assert tokenize(tmp_path, input_path, "a") == 2  # exists, no --overwrite


def test_cli_bad_rows_error_or_are_counted(tmp_path, capsys):
    rows = fixture_rows(("dpo", "rpo", "iopo"))
    bad = json.loads(json.dumps(rows[0]))
    bad["sequences"][1]["messages"][0]["role"] = "robot"
    input_path = write_rows(tmp_path / "pairs.jsonl", [*rows[:5], bad, *rows[5:]])
    assert tokenize(tmp_path, input_path, max_length=1024) == 2
    assert "pairs.jsonl:6: field 'sequences[1].messages[0].role'" in capsys.readouterr().err
    assert not (tmp_path / "shards").exists()
    assert tokenize(tmp_path, input_path, max_length=1024, skip_bad=True) == 0
    counts = read_manifest(tmp_path / "shards")["counts"]
    assert counts["examples"] == 5 and counts["input_rows"] == 8
    assert counts["dropped"] == {"bad_row:bad_field": 1, "bad_row:group_size_mismatch": 2}
    assert "pairs.jsonl:7: field 'recipe'" in counts["bad_rows"]["examples"][1]
