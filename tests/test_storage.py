"""gs:// paths (data_pipeline/storage.py) without training: which settings and flags take them, and, against the GCS
emulator (`gcs_fixtures`), the writes that stand in for a rename (one upload per file, markers last), the local
copies of inputs, and `rpo-jax tokenize` / `build-pairs` from and to a bucket. Code that opens gs:// runs in a
subprocess: a GCS client reads its settings when first imported, and this test process may have imported one
without the emulator's settings."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from gcs_fixtures import BUCKET
from trainer_fixtures import ROOT, cli_env

from data_pipeline.storage import storage_path_problem
from rpo_jax.config.loading import config_from_dict
from rpo_jax.config.schema import ConfigError
from rpo_jax.runtime.compilation_cache import run_cache_dir

PAIRS = ROOT / "data_pipeline/assets/default_pairs/eval_pairs.jsonl"
DPO_IMPORT = ROOT / "data_pipeline/assets/prefs/dpo_en_demo-first50.json"
TOKENIZER = ROOT / "data_pipeline/assets/tokenizers/llama2-sp-32k"


def test_which_paths_take_a_bucket():
    assert storage_path_problem("gs://bucket/run") == "" and storage_path_problem("runs/x") == ""
    assert "needs a bucket name" in storage_path_problem("gs:///run")
    assert "only gs:// URLs" in storage_path_problem("s3://bucket/run")
    cfg = config_from_dict({"train": {"output_dir": "gs://b/run", "init_checkpoint": "gs://b/ckpt"}})
    assert cfg.train.output_dir == "gs://b/run"
    assert run_cache_dir(cfg.train.compilation_cache_dir, cfg.train.output_dir) == "gs://b/run/jax_compilation_cache"
    assert run_cache_dir("", "gs://b/run") == ""  # "" turns the cache off
    with pytest.raises(ConfigError, match=r"^train.output_dir=s3://b/run: only gs:// URLs"):
        config_from_dict({"train": {"output_dir": "s3://b/run"}})
    with pytest.raises(ConfigError, match=r"^data.tokenizer_path=gs://b/tok: this path must be local"):
        config_from_dict({"data": {"tokenizer_path": "gs://b/tok"}})


LIBRARY_CHECKS = """
import json, os
from pathlib import Path
from data_pipeline.files import write_json_atomic
from data_pipeline.storage import list_files, local_copy, move_tree, staged_output, storage_path
from rpo_jax.train.run_log import MetricsLog

root = "gs://{bucket}/lib"
out = {{}}
write_json_atomic(root + "/a.json", {{"x": 1}})
out["json"] = json.loads(storage_path(root + "/a.json").read_text())
log = MetricsLog(root + "/metrics.jsonl", enabled=True)
for step in range(4):
    log.write({{"step": step, "loss": 0.5}})
log.write({{"step": 2, "eval/loss": 0.4}})
log.truncate_to(2)  # what a resume from step 2 keeps: train steps 0, 1 and the eval at 2
out["metrics"] = [r["step"] for r in MetricsLog(root + "/metrics.jsonl", enabled=True).read()]
with staged_output(root + "/folder", marker=("z_first.json", "a_last.json")) as local:
    for name in ("a_last.json", "b.json", "sub/c.bin", "z_first.json"):
        (Path(local) / name).parent.mkdir(parents=True, exist_ok=True)
        (Path(local) / name).write_text(name)
out["listed"] = list_files(root + "/folder")
copy = local_copy(root + "/folder", "test")
out["copied"] = sorted(p.relative_to(copy).as_posix() for p in Path(copy).rglob("*") if p.is_file())
out["copied_again"] = local_copy(root + "/folder", "test") == copy
for name in ("x.json", "y/z.json"):
    write_json_atomic(root + "/to_move/" + name, name)
move_tree(root + "/to_move", root + "/moved")
out["moved"] = sorted(list_files(root + "/moved")), storage_path(root + "/to_move").exists()
print(json.dumps(out))
"""


def test_bucket_writes_and_local_copies(gcs_emulator, tmp_path):
    """One upload per file, metrics.jsonl rewritten whole (appends and a resume's truncation), a staged folder
    uploaded with its markers last and in order, a local copy made once, a move that keeps every file."""
    env = cli_env(**gcs_emulator.env(), XDG_CACHE_HOME=str(tmp_path))
    code = LIBRARY_CHECKS.format(bucket=BUCKET)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["json"] == {"x": 1}
    assert out["metrics"] == [0, 1, 2]
    files = ["a_last.json", "b.json", "sub/c.bin", "z_first.json"]
    assert out["listed"] == {name: len(name) for name in files}
    assert out["copied"] == files and out["copied_again"]
    assert out["moved"] == [["x.json", "y/z.json"], False]
    assert upload_order(gcs_emulator, "lib/folder/")[-2:] == ["lib/folder/z_first.json", "lib/folder/a_last.json"]


def upload_order(gcs_emulator, prefix: str) -> list[str]:
    return sorted(gcs_emulator.names(prefix), key=lambda name: gcs_emulator.object_info(name)["timeCreated"])


def rpo_jax(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rpo_jax.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_tokenize_from_and_to_a_bucket(gcs_emulator, tmp_path):
    """Pairs read from the bucket, shards uploaded with manifest.json after every other file; a second tokenize
    into the same folder is refused in one line unless --overwrite."""
    env = cli_env(**gcs_emulator.env(), XDG_CACHE_HOME=str(tmp_path))
    gcs_emulator.write("tok/in/pairs.jsonl", PAIRS.read_bytes())
    args = ["tokenize", "--input", f"gs://{BUCKET}/tok/in/pairs.jsonl", "--tokenizer", str(TOKENIZER)]
    args += ["--output", f"gs://{BUCKET}/tok/shards", "--max-length", "512"]
    result = rpo_jax(*args, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    order = upload_order(gcs_emulator, "tok/shards/")
    assert len(order) > 2 and order[-1] == "tok/shards/manifest.json", order
    assert json.loads(gcs_emulator.read("tok/shards/manifest.json"))["counts"]["examples"] > 0
    again = rpo_jax(*args, env=env)
    assert again.returncode == 2 and f"gs://{BUCKET}/tok/shards: already exists" in again.stderr
    assert "Traceback" not in again.stderr


def test_build_pairs_from_and_to_a_bucket(gcs_emulator, tmp_path):
    """A preference file imported from the bucket; the pairs folder uploaded with stats.json last."""
    env = cli_env(**gcs_emulator.env(), XDG_CACHE_HOME=str(tmp_path))
    gcs_emulator.write("prefs/in/dpo.json", DPO_IMPORT.read_bytes())
    result = rpo_jax(
        *("build-pairs", "--recipe", "dpo", "--input", f"gs://{BUCKET}/prefs/in/dpo.json"),
        *("--output", f"gs://{BUCKET}/prefs/pairs"),
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    order = upload_order(gcs_emulator, "prefs/pairs/")
    assert "prefs/pairs/pairs.jsonl" in order and order[-1] == "prefs/pairs/stats.json", order
    rows = gcs_emulator.read("prefs/pairs/pairs.jsonl").decode().splitlines()
    assert len(rows) == len(json.loads(DPO_IMPORT.read_text()))


def test_import_hf_to_a_bucket_and_export_from_it(gcs_emulator, tmp_path):
    """A params checkpoint written into the bucket (Orbax arrays through TensorStore, model_config.json after
    everything else) reads back: exported to a local HF folder, its tensors equal the imported ones."""
    from llama_hf_fixtures import tiny_config, write_numpy_llama
    from safetensors.numpy import load_file

    source = write_numpy_llama(tiny_config(), tmp_path / "source")
    env = cli_env(**gcs_emulator.env(), XDG_CACHE_HOME=str(tmp_path / "cache"))
    imported = rpo_jax("import-hf", "--model", str(source), "--output", f"gs://{BUCKET}/ckpt/tiny", env=env)
    assert imported.returncode == 0, imported.stderr[-3000:]
    order = upload_order(gcs_emulator, "ckpt/tiny/")
    assert "ckpt/tiny/params/commit_success.txt" in order and order[-1] == "ckpt/tiny/model_config.json", order
    exported = rpo_jax(
        "export-hf", "--checkpoint", f"gs://{BUCKET}/ckpt/tiny", "--output", str(tmp_path / "hf"), env=env
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    want, got = load_file(source / "model.safetensors"), load_file(tmp_path / "hf" / "model.safetensors")
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_compilation_cache_is_on_in_code_and_reused(tmp_path):
    """`enable_compilation_cache` (what train, eval and generate call) makes JAX write compiled programs there;
    a second process compiling the same function finds them: no new entries, and a cache hit logged."""
    code = textwrap.dedent(
        f"""
        import jax, jax.numpy as jnp
        from rpo_jax.runtime.compilation_cache import enable_compilation_cache
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # cache even this tiny program
        enable_compilation_cache({str(tmp_path / "cache")!r})
        print(jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).sum())
        """
    )
    env = cli_env(JAX_LOG_COMPILES="1")  # logs each persistent-cache hit as a warning
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert entries
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == entries
    assert "Persistent compilation cache hit" in second.stderr
