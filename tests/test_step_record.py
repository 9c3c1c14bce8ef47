"""A step's metrics record and its checks (rpo_jax.train.step_record): the non-finite stop and the step-0
invariant (policy == reference), on host-side values with no model or compile."""

import math

import pytest
from synthetic import tiny_config

from rpo_jax.train.step_record import TrainingStopped, check_step0, step_record

LN2 = math.log(2)


def host_metrics(loss=LN2, reward=0.0, nonfinite_run=0) -> dict:
    """What a step returns after device_get: (sum, denominator) per metric, plus the step's scalars."""
    sums = {
        "loss": (loss * 4, 4),
        "rewards/chosen": (reward * 4, 4),
        "rewards/rejected": (0.0, 4),
        "logps/chosen": (-400.0, 4),
        "logps/rejected": (-480.0, 4),
    }
    return {
        "sums": sums,
        "grad_norm": 1.5,
        "learning_rate": 1e-3,
        "skipped": nonfinite_run > 0,
        "nonfinite_total": nonfinite_run,
        "nonfinite_run": nonfinite_run,
    }


def test_record_divides_sums_and_times_the_step():
    record = step_record(tiny_config(), 3, host_metrics(), tokens=1000, seconds=2.0, latest_checkpoint=None)
    assert record["step"] == 3 and record["loss"] == pytest.approx(math.log(2))
    assert record["logps/chosen"] == -100.0 and record["tokens_per_s"] == 500.0 and record["step_time"] == 2.0


def test_too_many_nonfinite_steps_stop_the_run_naming_the_last_good_checkpoint():
    cfg = tiny_config(train={"max_consecutive_nonfinite": 3})
    step_record(cfg, 5, host_metrics(nonfinite_run=2), tokens=1, seconds=1.0, latest_checkpoint=4)
    with pytest.raises(TrainingStopped, match="3 consecutive non-finite.*last good checkpoint: step 4"):
        step_record(cfg, 6, host_metrics(nonfinite_run=3), tokens=1, seconds=1.0, latest_checkpoint=4)


def test_step0_accepts_policy_equal_to_reference_and_refuses_a_reward_or_a_wrong_loss():
    cfg = tiny_config()
    ok = step_record(cfg, 0, host_metrics(), tokens=1, seconds=1.0, latest_checkpoint=None)
    check_step0(cfg, ok)
    rewarded = step_record(cfg, 0, host_metrics(reward=0.01), tokens=1, seconds=1.0, latest_checkpoint=None)
    with pytest.raises(RuntimeError, match="rewards/chosen"):
        check_step0(cfg, rewarded)
    dpo = tiny_config(loss={"loss_type": ["sigmoid"], "loss_weights": [1.0]})
    wrong_loss = step_record(dpo, 0, host_metrics(loss=0.7), tokens=1, seconds=1.0, latest_checkpoint=None)
    with pytest.raises(RuntimeError, match="!= ln 2"):
        check_step0(dpo, wrong_loss)
    check_step0(
        tiny_config(train={"reference_mode": "none"}, loss={"loss_type": ["simpo"], "loss_weights": [1.0]}), rewarded
    )  # no reference: nothing to compare
