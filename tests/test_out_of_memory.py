"""Running out of memory is a one-line error that says what to change (and, in an experiment, which stage)."""

import jax
import pytest

from rpo_jax import cli

XLA_OOM = "RESOURCE_EXHAUSTED: Out of memory allocating 28829853952 bytes."


def raise_oom(*_):
    raise jax.errors.JaxRuntimeError(XLA_OOM)


def test_the_cli_prints_an_out_of_memory_as_one_line(monkeypatch, capsys):
    monkeypatch.setattr("rpo_jax.commands.plan.run", raise_oom)
    assert cli.main(["plan", "--config", "configs/run/tiny_rpo.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("rpo-jax plan: error: RESOURCE_EXHAUSTED: Out of memory allocating 28829853952 bytes;")
    assert "train.grad_accum_steps" in err and "model.remat_policy" in err
    with pytest.raises(jax.errors.JaxRuntimeError):  # --debug keeps the traceback
        cli.main(["plan", "--config", "configs/run/tiny_rpo.yaml", "--debug"])


def test_other_runtime_errors_keep_their_traceback(monkeypatch):
    def fail(*_):
        raise jax.errors.JaxRuntimeError("INTERNAL: something else")

    monkeypatch.setattr("rpo_jax.commands.plan.run", fail)
    with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
        cli.main(["plan", "--config", "configs/run/tiny_rpo.yaml"])


def test_an_experiment_stage_out_of_memory_names_the_stage_and_stays_partial(tmp_path):
    from experiments.stages import StageStore
    from rpo_jax.runtime.out_of_memory import OutOfMemory

    store = StageStore(tmp_path)
    with pytest.raises(OutOfMemory, match=r"^stage train-iopo-lr0-[0-9a-f]{16}: RESOURCE_EXHAUSTED: .* 28829853952 b"):
        store.run("train-iopo-lr0", {"steps": 30}, (), raise_oom)
    assert [p.name.startswith(".train-iopo-lr0-") for p in tmp_path.iterdir()] == [True]
