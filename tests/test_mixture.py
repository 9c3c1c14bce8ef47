"""Weighted mixtures of shard folders (`data.sources`): realised proportions, per-source epochs, exact resume with
length buckets / mirror grouping / packing, and a source that cannot be read naming itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.pairs.schema import Message, Sequence, pair_id
from data_pipeline.records.build import build_shards
from data_pipeline.records.mixture import (
    UNIT_EXAMPLES,
    UNIT_MIRROR_UNITS,
    Mixture,
    MixtureSource,
    MixtureSourceError,
    mixture_fingerprint,
    position_counts,
)
from data_pipeline.records.mixture_loader import make_mixture_loader
from data_pipeline.records.tokenize import DEFAULT_TOKENIZER_DIR
from data_pipeline.records.truncation import TruncationSettings

MAX_LENGTH = 128
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def mirrored_rows(tag: str, num_mirrored: int, num_single: int) -> list[dict]:
    """RPO rows of source `tag`: pairs, the mirrors of the first `num_mirrored` (same responses, roles swapped)."""
    rows, mirrors = [], []
    for i in range(num_mirrored + num_single):
        first, second = f"{tag} answer {' '.join(WORDS[: 1 + i])}", f"{tag.upper()} ANSWER {WORDS[(i + 5) % 12]}"
        prompt_a, prompt_b = (Message("user", f"{tag} {i}: use lowercase."),), (Message("user", f"{tag} {i}: not."),)
        rows.append((Sequence(prompt_a, first), Sequence(prompt_a, second)))
        if i < num_mirrored:
            mirrors.append((Sequence(prompt_b, second), Sequence(prompt_b, first)))
    return [
        {"id": pair_id("rpo", s), "recipe": "rpo", "sequences": [q.to_json() for q in s], "margin": 1,
         "group_id": f"{tag}{k}", "provenance": {"synthetic": True}}
        for k, s in enumerate(rows + mirrors)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> list[Path]:
    """Two shard folders: 'a' of 11 examples (4 mirror pairs), 'b' of 5 (2 mirror pairs)."""
    root, out = tmp_path_factory.mktemp("mixture"), []
    for tag, mirrored, single in (("a", 4, 3), ("b", 2, 1)):
        pairs = root / f"{tag}.jsonl"
        pairs.write_text("".join(json.dumps(r) + "\n" for r in mirrored_rows(tag, mirrored, single)))
        build_shards(pairs, DEFAULT_TOKENIZER_DIR, root / tag, TruncationSettings(MAX_LENGTH, "drop"))
        out.append(root / tag)
    return out


def sources(folders, weights=(0.7, 0.3)) -> list[MixtureSource]:
    return [MixtureSource(str(f), w, f"data.sources[{k}]") for k, (f, w) in enumerate(zip(folders, weights))]


def test_realised_proportions_are_the_weights_and_each_source_runs_whole_epochs(folders):
    """Grain's mix is a deterministic interleave, so the bound is not a sampling interval: over n examples each of
    two sources holds n * q_k to within 1, q_k being its weight's share as Grain rounds the weights to integers
    (the smallest to 100: q_k within 1 % of w_k). So |count_k - n * w_k| <= 1 + 0.01 * n * w_k."""
    mixture = Mixture(sources(folders))
    loader = make_mixture_loader(sources(folders), batch_size=8, seed=3, max_length=MAX_LENGTH)
    ids = np.concatenate([next(loader)["example_index"] for _ in range(60)])
    source = np.searchsorted(mixture.offsets, ids, side="right") - 1
    n = len(ids)
    for k, weight in enumerate((0.7, 0.3)):
        count = int(np.sum(source == k))
        assert abs(count - n * weight) <= 1 + 0.01 * n * weight, (k, count, n)
    realised = mixture.realised(n, UNIT_EXAMPLES)
    assert [r["trained"] for r in realised] == [int(np.sum(source == k)) for k in range(2)]
    for k, size in enumerate([11, 5]):  # within a source, every example once before any repeats (then reshuffled)
        local = ids[source == k] - mixture.offsets[k]
        epochs = [sorted(local[e * size : (e + 1) * size]) for e in range(len(local) // size)]
        assert all(epoch == list(range(size)) for epoch in epochs), k
        assert list(local[:size]) != list(local[size : 2 * size])


@pytest.mark.parametrize("weights", [(0.7, 0.3), (1.0, 1.0, 1.0), (3.0, 1.0, 0.5), (0.123, 0.877)])
def test_position_counts_follow_the_mixed_stream(folders, weights):
    mixture = Mixture(sources([folders[0], folders[1], folders[0]][: len(weights)], weights))
    order = mixture.example_order(seed=0, group_mirrors=False)
    source = np.searchsorted(mixture.offsets, [order[p] for p in range(400)], side="right") - 1
    for n in (0, 1, 7, 100, 333, 400):
        assert position_counts(n, weights) == [int(np.sum(source[:n] == k)) for k in range(len(weights))], n


@pytest.mark.parametrize(
    "packing,group_mirrors,length_buckets",
    [("none", True, (32, 64, 128)), ("none", False, (48, 128)), ("packed", True, ())],
    ids=["buckets+mirrors", "buckets", "packed+mirrors"],
)
def test_a_restored_state_continues_the_mixture_exactly(folders, packing, group_mirrors, length_buckets):
    def loader(seed=5):
        return make_mixture_loader(
            sources(folders),
            batch_size=4,
            seed=seed,
            max_length=MAX_LENGTH,
            length_buckets=length_buckets,
            packing=packing,
            group_mirrors=group_mirrors,
        )

    uninterrupted = loader()
    first = [next(uninterrupted) for _ in range(5)]
    state = json.loads(json.dumps(uninterrupted.get_state()))  # as the checkpoint stores it
    expected = [next(uninterrupted) for _ in range(6)]
    resumed = loader()
    resumed.set_state(state)
    for want, got in zip(expected, [next(resumed) for _ in range(6)], strict=True):
        assert want.keys() == got.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert any(not np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(first, [next(loader(6)) for _ in range(5)]))
    if packing == "none" and group_mirrors:  # each mirror pair of either source in the same step
        mixture = uninterrupted.mixture
        partner = {}
        for k, manifest in enumerate(mixture.manifests):
            for a, b in manifest["mirror_pairs"]:
                a, b = a + int(mixture.offsets[k]), b + int(mixture.offsets[k])
                partner.update({a: b, b: a})
        for batch in first + expected:
            step = set(batch["example_index"].tolist())
            assert all(partner[i] in step for i in step if i in partner), step
        assert uninterrupted.mixture_unit == UNIT_MIRROR_UNITS
    if length_buckets:
        assert {b["tokens"].shape[-1] for b in first + expected} <= set(length_buckets)


def test_processes_share_one_mixed_stream(folders):
    """Two processes' slices of a global batch of 4 are the single process's batch of 4, in the same order."""
    one = make_mixture_loader(sources(folders), batch_size=4, seed=2, max_length=MAX_LENGTH)
    two = [
        make_mixture_loader(sources(folders), batch_size=2, seed=2, max_length=MAX_LENGTH, shard_index=i, shard_count=2)
        for i in range(2)
    ]
    for _ in range(4):
        together = next(one)["example_index"].tolist()
        parts = [next(p)["example_index"].tolist() for p in two]
        assert together[0::2] == parts[0] and together[1::2] == parts[1]


def test_a_source_that_cannot_be_read_names_itself(folders, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MixtureSourceError, match=rf"^data\.sources\[1\]={empty}: .*no manifest"):
        Mixture(sources([folders[0], empty]))
    other_template = tmp_path / "b_other_template"
    shutil.copytree(folders[1], other_template)
    manifest = json.loads((other_template / "manifest.json").read_text())
    manifest["chat_template"]["text"] += "{# another template #}"
    (other_template / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MixtureSourceError, match=rf"^data\.sources\[1\]={other_template}: its chat template differs"):
        Mixture(sources([folders[0], other_template]))
    with pytest.raises(MixtureSourceError, match=r"data\.sources\[0\]=.*do not fit max_length 16"):
        make_mixture_loader(sources(folders), batch_size=2, seed=0, max_length=16)


# ---------------------------------------------------------------- the data.sources setting


def test_sources_settings_are_checked_and_their_paths_resolved(folders, tmp_path, monkeypatch):
    from rpo_jax.config.loading import REPO_ROOT, config_from_dict, config_to_dict, load_config
    from rpo_jax.config.schema import ConfigError
    from rpo_jax.train.preflight import check_run_inputs

    base = REPO_ROOT / "configs" / "base.yaml"
    two = f"data.sources=[{{path: {folders[0]}, weight: 0.7}}, {{path: rel/pairs.jsonl}}]"
    monkeypatch.chdir(tmp_path)
    cfg = load_config(base, [two])
    assert [(s.path, s.weight) for s in cfg.data.sources] == [
        (str(folders[0]), 0.7),
        (str(tmp_path / "rel/pairs.jsonl"), 1.0),
    ]
    assert config_from_dict(config_to_dict(cfg)) == cfg
    config_file = tmp_path / "run.yaml"
    config_file.write_text(f"include: [{base}]\ndata:\n  sources: [{{path: data/a.jsonl, weight: 2}}]\n")
    assert load_config(config_file).data.sources[0].path == str(REPO_ROOT / "data/a.jsonl")  # as every config path
    for override, message in [
        ("data.sources=[{path: a, weight: 0}]", r"data\.sources\[0\]\.weight must be > 0 and finite, got 0"),
        ("data.sources=[{path: a}, {weight: 1}]", r"data\.sources\[1\]\.path is empty"),
        ("data.sources=[{path: a, wieght: 1}]", r"unknown config key\(s\): data\.sources\[0\]\.wieght"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(base, [override])
    with pytest.raises(ConfigError, match=r"data\.sources and data\.train_path are both set"):
        load_config(base, [two, f"data.train_path={folders[1]}"])
    with pytest.raises(ConfigError, match=rf"data\.sources\[1\]\.path={tmp_path}/rel/pairs\.jsonl: neither a pair"):
        check_run_inputs(cfg)
    (tmp_path / "rel").mkdir()
    (tmp_path / "rel/pairs.jsonl").write_text("")
    with pytest.raises(ConfigError, match=r"data\.sources\[1\]\.path=.* is a pair file: tokenizing it needs data\.tok"):
        check_run_inputs(cfg)
    with pytest.raises(ConfigError, match=r"reference_mode=precomputed .* does not read a mixture"):
        check_run_inputs(
            load_config(base, [two, "train.reference_mode=precomputed", f"data.tokenizer_path={DEFAULT_TOKENIZER_DIR}"])
        )


def test_a_changed_mixture_is_refused_on_resume_and_named(folders):
    from rpo_jax.config.loading import REPO_ROOT, config_to_dict, load_config
    from rpo_jax.io.checkpoints import CheckpointMismatchError, check_resume_compatible

    def fingerprint(weights):
        return mixture_fingerprint([MixtureSource(str(f), w, "s") for f, w in zip(folders, weights)])

    assert fingerprint((7, 3)) == fingerprint((0.7, 0.3)) != fingerprint((0.5, 0.5))
    sources = f"data.sources=[{{path: {folders[0]}, weight: 0.7}}, {{path: {folders[1]}, weight: 0.3}}]"
    config = config_to_dict(load_config(REPO_ROOT / "configs" / "base.yaml", [sources]))
    meta = {"config": config, "data_fingerprint": fingerprint((0.7, 0.3))}
    now = {"data_fingerprint": fingerprint((0.5, 0.5))}
    with pytest.raises(CheckpointMismatchError, match="^data.sources: the checkpoint was trained on content"):
        check_resume_compatible(meta, config, now, allow_config_change=False, allow_data_change=False)
