"""Grain loader over tokenized shards: batch contract, determinism, resumable state, process sharding, buckets;
shard folders as TFDS folders (read by TFDS without TensorFlow, and TFDS folders made elsewhere read by the loader)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.pairs.schema import Message, Sequence, pair_id
from data_pipeline.records.build import build_shards
from data_pipeline.records.loader import dataset_fingerprint, make_loader
from data_pipeline.records.packed_loader import make_packed_loader
from data_pipeline.records.pair_example import ShardFormatError, ShardRecords
from data_pipeline.records.shards import read_manifest, read_row_lengths
from data_pipeline.records.tokenize import DEFAULT_TOKENIZER_DIR
from data_pipeline.records.truncation import TruncationSettings

NUM_PAIRS, MAX_LENGTH, EOS = 23, 256, 2
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def synthetic_pairs(n: int) -> list[dict]:
    """Pairs whose responses grow with the row index, so rows span ~40..250 tokens."""
    rows = []
    for i in range(n):
        messages = (Message("system", "Answer in lowercase."), Message("user", f"List {i} greek letters."))
        chosen = " ".join(WORDS[j % len(WORDS)] for j in range(3 + 4 * i))
        rejected = " ".join(WORDS[j % len(WORDS)].upper() for j in range(1 + 2 * i))
        recipe = "rpo" if i % 2 else "dpo"
        sequences = (Sequence(messages, chosen), Sequence(messages, rejected))
        rows.append(
            {
                "id": pair_id(recipe, sequences),
                "recipe": recipe,
                "sequences": [s.to_json() for s in sequences],
                "margin": 3 + i % 3 if recipe == "rpo" else 0,
                "group_id": f"g{i}",
                "provenance": {"synthetic": True},
            }
        )
    return rows


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("loader")
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in synthetic_pairs(NUM_PAIRS)))
    out = root / "shards"
    manifest = build_shards(pairs, DEFAULT_TOKENIZER_DIR, out, TruncationSettings(MAX_LENGTH, "drop"), num_shards=3)
    assert manifest["num_examples"] == NUM_PAIRS, manifest["counts"]
    return out


@pytest.fixture(scope="module")
def stored(shard_dir) -> list[dict]:
    source = ShardRecords(shard_dir, read_manifest(shard_dir))
    records = [source[i] for i in range(len(source))]
    assert [r["example_index"] for r in records] == list(range(NUM_PAIRS))
    return records


def take(iterator, n: int) -> list[dict]:
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_batch_contract_matches_stored_rows(shard_dir, stored):
    loader = make_loader(shard_dir, batch_size=4, seed=0, num_epochs=1, remainder="keep")
    seen = []
    for batch in loader:
        B, G, L = batch["tokens"].shape
        assert G == 2 and L == MAX_LENGTH and B <= 4
        assert batch["tokens"].dtype == np.int32 and batch["loss_mask"].dtype == bool
        assert batch["segment_ids"].dtype == np.int32 and batch["positions"].dtype == np.int32
        assert batch["margin"].shape == (B,) and batch["margin"].dtype == np.int32
        assert batch["example_index"].dtype == np.int64 and "ref_logps" not in batch
        for b, index in enumerate(batch["example_index"]):
            record = stored[index]
            assert batch["margin"][b] == record["margin"]
            for g, row in enumerate(record["rows"]):
                n, start = len(row), record["response_starts"][g]
                np.testing.assert_array_equal(batch["tokens"][b, g, :n], row)
                assert np.all(batch["tokens"][b, g, n:] == EOS)  # pad id = eos (tokenizer has no pad)
                np.testing.assert_array_equal(batch["segment_ids"][b, g], np.arange(L) < n)
                np.testing.assert_array_equal(batch["positions"][b, g, :n], np.arange(n))
                expected_mask = (np.arange(L) >= start) & (np.arange(L) < n)
                np.testing.assert_array_equal(batch["loss_mask"][b, g], expected_mask)
                assert batch["tokens"][b, g, n - 1] == EOS and batch["loss_mask"][b, g, n - 1]  # EOS scored
        seen += batch["example_index"].tolist()
    assert sorted(seen) == list(range(NUM_PAIRS)) and loader.num_batches == 6


def test_same_seed_same_batches_other_seed_other_order(shard_dir):
    first = take(make_loader(shard_dir, batch_size=3, seed=7), 5)
    again = take(make_loader(shard_dir, batch_size=3, seed=7), 5)
    assert_batches_equal(first, again)
    other = take(make_loader(shard_dir, batch_size=3, seed=8), 5)
    assert [b["example_index"].tolist() for b in first] != [b["example_index"].tolist() for b in other]


def test_epochs_are_reshuffled_and_finite(shard_dir):
    loader = make_loader(shard_dir, batch_size=1, seed=1, num_epochs=2)
    order = [int(b["example_index"][0]) for b in loader]
    assert len(order) == loader.num_batches == 2 * NUM_PAIRS
    assert sorted(order[:NUM_PAIRS]) == sorted(order[NUM_PAIRS:]) == list(range(NUM_PAIRS))
    assert order[:NUM_PAIRS] != order[NUM_PAIRS:]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_restored_state_gives_the_next_batch(shard_dir, num_workers):
    k = 3
    reference = take(make_loader(shard_dir, batch_size=2, seed=5, length_buckets=(96, 160)), k + 2)
    loader = make_loader(shard_dir, batch_size=2, seed=5, length_buckets=(96, 160), num_workers=num_workers)
    try:
        assert_batches_equal(take(loader, k), reference[:k])  # worker processes keep the order
        state = loader.get_state_bytes()
    finally:
        loader.close()
    assert json.loads(state)  # stored by the trainer as JSON bytes
    resumed = make_loader(shard_dir, batch_size=2, seed=5, length_buckets=(96, 160), num_workers=num_workers)
    try:
        resumed.set_state_bytes(state)
        assert_batches_equal(take(resumed, 2), reference[k:])
    finally:
        resumed.close()


def test_process_shards_are_disjoint_and_cover_the_data(shard_dir):
    shares = []
    for index in range(3):
        loader = make_loader(
            shard_dir, batch_size=2, seed=3, shard_index=index, shard_count=3, num_epochs=1, remainder="keep"
        )
        shares.append([i for batch in loader for i in batch["example_index"].tolist()])
    assert sorted(sum(shares, [])) == list(range(NUM_PAIRS))
    # With remainder="drop" (the default) the last partial global batch (23 % (2*3) = 5 examples) goes, equally for all.
    counts, union = [], set()
    for index in range(3):
        loader = make_loader(shard_dir, batch_size=2, seed=3, shard_index=index, shard_count=3, num_epochs=1)
        ids = [i for batch in loader for i in batch["example_index"].tolist()]
        counts.append((loader.num_batches, len(ids)))
        assert union.isdisjoint(ids)
        union |= set(ids)
    assert counts == [(3, 6)] * 3 and len(union) == NUM_PAIRS - NUM_PAIRS % 6


def test_fill_counts_every_example_once_in_full_batches(shard_dir):
    # 23 examples, global batch 2 x 3 = 6: 4 batches per process, the last global one holds 5 real + 1 fill row.
    real, fill = [], []
    for index in range(3):
        loader = make_loader(
            shard_dir, batch_size=2, seed=3, shard_index=index, shard_count=3, num_epochs=1, remainder="fill"
        )
        batches = list(loader)
        assert loader.num_batches == len(batches) == 4 and all(b["tokens"].shape[0] == 2 for b in batches)
        for batch in batches:
            for i, w in zip(batch["example_index"].tolist(), batch["example_weight"].tolist(), strict=True):
                (real if w == 1.0 else fill).append(i)
    assert sorted(real) == list(range(NUM_PAIRS)) and len(fill) == 24 - NUM_PAIRS
    assert set(fill) <= set(real)  # fill rows are real, valid examples (weighted out)


def test_each_batch_is_padded_to_its_bucket(shard_dir):
    buckets = (96, 128, 192)
    widths = set()
    for batch in make_loader(shard_dir, batch_size=1, seed=0, num_epochs=1, length_buckets=buckets):
        longest = int(batch["segment_ids"].sum(-1).max())
        width = batch["tokens"].shape[-1]
        assert width == min([b for b in buckets if b >= longest] + [MAX_LENGTH])
        widths.add(width)
    assert widths == {*buckets, MAX_LENGTH}  # rows span 84..226 tokens
    loader = make_loader(shard_dir, batch_size=2, seed=0, num_epochs=1, max_length=300)
    assert {b["tokens"].shape[-1] for b in loader} == {300}  # no buckets: pad to max_length
    with pytest.raises(ValueError, match="do not fit max_length"):
        make_loader(shard_dir, batch_size=2, seed=0, max_length=64)
    with pytest.raises(ValueError, match=re.escape("length_buckets [512]")):
        make_loader(shard_dir, batch_size=2, seed=0, length_buckets=(512,))


@pytest.mark.parametrize("remainder", ["drop", "fill", "keep"])
def test_every_process_pads_to_the_global_batchs_bucket(shard_dir, remainder):
    """Each process pads step k to the bucket of the whole global batch k (what one process loading all of it
    picks), though the rows it holds alone would often fit a smaller one: the step's shapes agree everywhere."""
    buckets, processes, steps = (96, 128, 192), 3, 3 if remainder == "drop" else 4

    def loader(index: int, count: int):
        return make_loader(
            shard_dir,
            batch_size=6 // count,
            seed=1,
            shard_index=index,
            shard_count=count,
            num_epochs=1,
            length_buckets=buckets,
            remainder=remainder,
        )

    whole = list(loader(0, 1))
    parts = [list(loader(i, processes)) for i in range(processes)]
    assert len(whole) == steps and all(len(p) == steps for p in parts)
    own_choice_differs = False
    for k, batch in enumerate(whole):
        width = batch["tokens"].shape[-1]
        assert [p[k]["tokens"].shape[-1] for p in parts] == [width] * processes, k
        own = {min([b for b in buckets if b >= int(p[k]["segment_ids"].sum(-1).max())] + [MAX_LENGTH]) for p in parts}
        own_choice_differs |= len(own) > 1
    assert own_choice_differs  # otherwise this data would not tell global from per-process buckets


def test_ref_logps_are_emitted_per_example(shard_dir):
    ref = -np.arange(NUM_PAIRS * 2, dtype=np.float32).reshape(NUM_PAIRS, 2) - 0.5
    with pytest.raises(ValueError, match="shape"):
        make_loader(shard_dir, batch_size=4, seed=0, ref_logps=ref[:-1])
    with pytest.raises(ValueError, match="non-finite"):
        make_loader(shard_dir, batch_size=4, seed=0, ref_logps=np.where(ref < -3, np.nan, ref))
    for batch in make_loader(shard_dir, batch_size=4, seed=2, num_epochs=1, ref_logps=ref.astype(np.float64)):
        assert batch["ref_logps"].dtype == np.float32 and batch["ref_logps"].shape == (4, 2)
        np.testing.assert_array_equal(batch["ref_logps"], ref[batch["example_index"]])
    assert "ref_logps" not in next(make_loader(shard_dir, batch_size=4, seed=2))


# ---------------------------------------------------------------- group_mirrors (RPO pair + its mirror in one step)


def mirrored_pairs(num_mirrored: int, num_single: int) -> list[dict]:
    """RPO rows: `num_mirrored` pairs each followed (not adjacently) by its mirror, plus unmirrored rows."""
    rows, mirrors = [], []
    for i in range(num_mirrored + num_single):
        first, second = f"answer {WORDS[i % 12]} {i}", f"ANSWER {WORDS[(i + 5) % 12]} {i}"
        prompt_a = (Message("user", f"Question {i}. Use lowercase."),)
        prompt_b = (Message("user", f"Question {i}. Do not use lowercase."),)
        row_a = (Sequence(prompt_a, first), Sequence(prompt_a, second))
        row_b = (Sequence(prompt_b, second), Sequence(prompt_b, first))  # same responses, roles swapped
        rows.append(row_a)
        if i < num_mirrored:
            mirrors.append(row_b)
    return [
        {
            "id": pair_id("rpo", s),
            "recipe": "rpo",
            "sequences": [q.to_json() for q in s],
            "margin": 1,
            "group_id": f"q{k}",
            "provenance": {"synthetic": True},
        }
        for k, s in enumerate(rows + mirrors)
    ]


@pytest.fixture(scope="module")
def mirror_shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mirrors")
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in mirrored_pairs(num_mirrored=4, num_single=3)))
    out = root / "shards"
    build_shards(pairs, DEFAULT_TOKENIZER_DIR, out, TruncationSettings(MAX_LENGTH, "drop"))
    return out


def test_manifest_lists_mirror_pairs(mirror_shards):
    # Rows 0..6 are the originals, rows 7..10 the mirrors of rows 0..3.
    assert read_manifest(mirror_shards)["mirror_pairs"] == [[0, 7], [1, 8], [2, 9], [3, 10]]


@pytest.mark.parametrize("batch_size,shard_count", [(2, 1), (1, 2), (4, 1)])
def test_group_mirrors_puts_each_mirror_in_the_same_step(mirror_shards, batch_size, shard_count):
    num_examples, epochs = 11, 6
    steps = num_examples * epochs // (batch_size * shard_count)
    loaders = [
        make_loader(
            mirror_shards, batch_size=batch_size, seed=5, shard_index=i, shard_count=shard_count, group_mirrors=True
        )
        for i in range(shard_count)
    ]
    stream = []  # example indices in global order, one list per optimizer step
    for _ in range(steps):
        stream.append([int(x) for loader in loaders for x in next(loader)["example_index"]])
    partner = {a: b for a, b in read_manifest(mirror_shards)["mirror_pairs"]}
    partner.update({b: a for a, b in list(partner.items())})
    for step in stream:
        assert all(partner[i] in step for i in step if i in partner), step
    flat = [i for step in stream for i in step]
    for epoch in range(len(flat) // num_examples):  # each complete epoch is a permutation of all examples
        assert sorted(flat[epoch * num_examples : (epoch + 1) * num_examples]) == list(range(num_examples))
    assert flat[:num_examples] != flat[num_examples : 2 * num_examples]  # reshuffled per epoch


def test_group_mirrors_resumes_and_needs_an_even_global_batch(mirror_shards):
    loader = make_loader(mirror_shards, batch_size=2, seed=1, group_mirrors=True)
    for _ in range(3):
        next(loader)
    state = loader.get_state()
    expected = [next(loader)["example_index"].tolist() for _ in range(4)]
    resumed = make_loader(mirror_shards, batch_size=2, seed=1, group_mirrors=True)
    resumed.set_state(state)
    assert [next(resumed)["example_index"].tolist() for _ in range(4)] == expected
    with pytest.raises(ValueError, match="even global batch"):
        make_loader(mirror_shards, batch_size=3, seed=1, group_mirrors=True)


# ---------------------------------------------------------------- TFDS folders, both ways

# Run in a fresh interpreter: data_pipeline imports tensorflow_datasets only where it is used (never to decode a
# record), and TFDS reads the folder without ever importing TensorFlow.
TFDS_READ = """
import importlib, json, pkgutil, sys
import numpy as np
import data_pipeline.records
for module in pkgutil.walk_packages(data_pipeline.records.__path__, 'data_pipeline.records.'):
    importlib.import_module(module.name)
assert 'tensorflow_datasets' not in sys.modules, 'imported by a data_pipeline module at import time'
from data_pipeline.records.pair_example import ShardRecords
from data_pipeline.records.shards import read_manifest
records = ShardRecords(sys.argv[1], read_manifest(sys.argv[1]))
assert [records[i]['example_index'] for i in range(len(records))] == list(range(len(records)))
# Grain's workers decode from several threads: an import there once deadlocked a worker (see example_proto)
assert 'tensorflow_datasets' not in sys.modules, 'imported by decoding a record'
import tensorflow_datasets as tfds
source = tfds.builder_from_directory(sys.argv[1]).as_data_source(split='train')
examples = [{k: v.decode() if isinstance(v, bytes) else np.asarray(v).tolist() for k, v in source[i].items()}
            for i in range(len(source))]
assert not [m for m in sys.modules if m.split('.')[0] == 'tensorflow'], 'tensorflow was imported'
print(json.dumps(examples))
"""


def test_tfds_reads_the_shards_as_the_loader_does_without_tensorflow(shard_dir, stored):
    result = subprocess.run(
        [sys.executable, "-c", TFDS_READ, str(shard_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    examples = json.loads(result.stdout)
    assert [e["margin"] for e in examples] == [r["margin"] for r in synthetic_pairs(NUM_PAIRS)]
    for example, record in zip(examples, stored, strict=True):
        assert example["tokens"] == np.concatenate(record["rows"]).tolist()
        assert example["row_lengths"] == [len(row) for row in record["rows"]]
        assert example["response_starts"] == record["response_starts"].tolist()
        assert example["margin"] == record["margin"] and example["recipe"] == record["recipe"]
        assert example["example_index"] == record["example_index"]


def write_tfds_folder(folder: Path, records: list[dict], tokenization_facts: dict | None, tokens_dtype=np.int32):
    """A folder as a TFDS user would write it: TFDS's serializer into two ArrayRecord files, `write_metadata`."""
    import tensorflow_datasets as tfds
    from array_record.python.array_record_module import ArrayRecordWriter

    features = tfds.features.FeaturesDict(
        {
            "tokens": tfds.features.Tensor(shape=(None,), dtype=tokens_dtype),
            "row_lengths": tfds.features.Tensor(shape=(2,), dtype=np.int32),
            "response_starts": tfds.features.Tensor(shape=(2,), dtype=np.int32),
            "margin": tfds.features.Tensor(shape=(), dtype=np.int32),
            "example_index": tfds.features.Scalar(dtype=np.int64),
            "recipe": tfds.features.Text(),
        }
    )
    folder.mkdir()
    halves = [records[: len(records) // 2], records[len(records) // 2 :]]
    for k, half in enumerate(halves):
        writer = ArrayRecordWriter(str(folder / f"prefs-train.array_record-{k:05d}-of-00002"), "group_size:1")
        for r in half:
            example = {key: r[key] for key in ("response_starts", "margin", "example_index", "recipe")}
            example["tokens"] = np.concatenate(r["rows"]).astype(tokens_dtype)
            example["row_lengths"] = [len(row) for row in r["rows"]]
            writer.write(features.serialize_example(example))
        writer.close()
    split = tfds.core.SplitInfo(name="train", shard_lengths=[len(h) for h in halves], num_bytes=0)
    metadata = {"metadata": tfds.core.MetadataDict(tokenization=tokenization_facts)} if tokenization_facts else {}
    tfds.folder_dataset.write_metadata(
        data_dir=folder, features=features, split_infos=[split], check_data=False, **metadata
    )


def test_a_tfds_folder_made_elsewhere_is_read_like_ours(tmp_path, mirror_shards):
    ours = read_manifest(mirror_shards)
    source = ShardRecords(mirror_shards, ours)
    records = [source[i] for i in range(len(source))]
    facts = {key: ours[key] for key in ("max_length", "pad_token_id", "tokenizer", "chat_template")}
    write_tfds_folder(tmp_path / "no_facts", records, None)
    no_facts = r"no_facts/metadata.json: tokenization.max_length, tokenization.pad_token_id, .* missing or mistyped"
    with pytest.raises(ShardFormatError, match=no_facts):
        read_manifest(tmp_path / "no_facts")
    write_tfds_folder(tmp_path / "int64", records, facts, tokens_dtype=np.int64)
    wrong_dtype = r"int64/features.json: .*tokens is TensorInfo\(shape=\(None,\), dtype=int64\), expected .*int32"
    with pytest.raises(ShardFormatError, match=wrong_dtype):
        read_manifest(tmp_path / "int64")

    folder = tmp_path / "elsewhere"
    write_tfds_folder(folder, records, facts)
    manifest = read_manifest(folder)
    assert manifest["mirror_pairs"] == ours["mirror_pairs"] == [[0, 7], [1, 8], [2, 9], [3, 10]]
    assert (manifest["num_examples"], manifest["max_row_length"]) == (ours["num_examples"], ours["max_row_length"])
    np.testing.assert_array_equal(read_row_lengths(folder, manifest), read_row_lengths(mirror_shards, ours))
    assert dataset_fingerprint(folder) == manifest["fingerprint"] != ours["fingerprint"]
    options = dict(batch_size=2, seed=3, num_epochs=2, length_buckets=(64, 128), group_mirrors=True)
    assert_batches_equal(list(make_loader(folder, **options)), list(make_loader(mirror_shards, **options)))
    packed = dict(rows_per_batch=1, seed=3, shared_prompt=True, num_epochs=1)
    assert_batches_equal(list(make_packed_loader(folder, **packed)), list(make_packed_loader(mirror_shards, **packed)))


def test_a_damaged_shard_is_named_in_one_line(tmp_path, shard_dir):
    from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

    copy = tmp_path / "shards"
    shutil.copytree(shard_dir, copy)
    first = copy / read_manifest(copy)["shards"][0]["path"]
    reader = ArrayRecordReader(str(first))
    stored_bytes = reader.read_all()
    reader.close()
    writer = ArrayRecordWriter(str(first), "group_size:1")
    for k, record in enumerate(stored_bytes):
        writer.write(b"\xff not a tf.train.Example" if k == 2 else record)
    writer.close()
    with pytest.raises(ShardFormatError) as err:
        list(make_loader(copy, batch_size=NUM_PAIRS, seed=0, num_epochs=1))
    assert str(err.value).startswith(f"{first}: record 2 (example 2): not a tf.train.Example")
    assert "\n" not in str(err.value)

    first.write_bytes(first.read_bytes()[: first.stat().st_size // 2])  # a copy cut short
    with pytest.raises(ShardFormatError) as err:
        make_loader(copy, batch_size=2, seed=0)
    assert str(err.value).startswith(f"{first}: not a readable ArrayRecord file (") and "\n" not in str(err.value)
