"""`tpu_pod.sh resume --queued` and `--num-slices`: a fake `gcloud` plays a queued resource's life (SUSPENDED after a
preemption, FAILED, DELETING, ACCEPTED -> PROVISIONING -> ACTIVE, ...) and records every call; each test asserts
the sequence of calls the launcher makes from one starting state."""

from __future__ import annotations

import json

import pytest
from launch_fixtures import TPU, _calls, _executable, _printed, _remote, _run

# Keeps the world in $FAKE_STATE (JSON): the queued resource's state (null = none) and its TPU VMs' states.
# `describe` reports the state, then moves a transitional one a step on (`next`); `delete` starts DELETING;
# `create` starts ACCEPTED with the nodes it names, which become READY when the queued resource turns ACTIVE.
FAKE_GCLOUD = r"""#!/usr/bin/env python3
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(json.dumps(["gcloud", *args]) + "\n")
with open(os.environ["FAKE_STATE"]) as f:
    world = json.load(f)
steps = {"DELETING": None, "SUSPENDING": "SUSPENDED", "ACCEPTED": "PROVISIONING", "PROVISIONING": "ACTIVE"}
steps.update(world.get("next", {}))
kind, verb = args[2], args[3]
flags = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
if kind == "queued-resources" and verb == "describe":
    state = world["queued"]
    if state is None:
        sys.exit(1)
    print(state)
    if state in steps:
        world["queued"] = steps[state]
        if world["queued"] == "ACTIVE":
            world["nodes"] = {name: "READY" for name in world["requested"]}
elif kind == "queued-resources" and verb == "delete":
    world["queued"], world["nodes"] = "DELETING", {}
elif kind == "queued-resources" and verb == "create":
    assert world["queued"] is None, "created under a name that still exists"
    count = int(flags.get("node-count", 0))
    world["queued"] = "ACCEPTED"
    world["requested"] = [f"{flags['node-prefix']}-{i}" for i in range(count)] if count else [flags["node-id"]]
elif kind == "tpu-vm" and verb == "describe":
    if args[4] not in world["nodes"]:
        sys.exit(1)
    print(world["nodes"][args[4]])
with open(os.environ["FAKE_STATE"], "w") as f:
    json.dump(world, f)
"""

ARGS = ["--name", "pod", "--zone", "us-east5-a", "--spot", "--output-dir", "/mnt/shared/run", "--steps", "5"]
# After the first describe: the launcher deletes, waits until the name is free, requests it again, waits for ACTIVE.
RECREATE = ["delete queued", "describe queued", "describe queued", "create queued", *["describe queued"] * 3]
REQUEST = ["create queued", *["describe queued"] * 3]
SETUP = ["git status", "git archive", "scp", "ssh", "ssh"]  # ship the code, unpack it, install it (fresh workers)


def label(call: list[str]) -> str:
    if call[0] == "git":
        return f"git {call[3]}"  # git -C REPO <verb>
    kind, verb = call[3], call[4]
    if verb == "ssh":
        return "train" if "bin/rpo-jax train" in _remote(call) else "ssh"
    if verb == "describe":
        return "describe queued" if kind == "queued-resources" else f"describe {call[5]}"
    return verb if verb == "scp" else f"{verb} {'queued' if kind == 'queued-resources' else 'node'}"


@pytest.fixture
def play(fake_env, tmp_path):
    """Runs `tpu_pod.sh ARGS...` against a queued resource starting as `world`; returns (result, call labels)."""
    _executable(tmp_path / "bin" / "gcloud", FAKE_GCLOUD)
    state = tmp_path / "world.json"

    def run(world: dict, *args: str):
        state.write_text(json.dumps({"nodes": {}, "requested": [], **world}))
        env = {**fake_env, "FAKE_STATE": str(state), "RPO_POLL_SECONDS": "0"}
        result = _run(TPU, *args, env=env)
        return result, [label(c) for c in _calls(fake_env)]

    return run


@pytest.mark.parametrize(
    ("world", "expected"),
    [
        ({"queued": "SUSPENDED"}, ["describe queued", *RECREATE, *SETUP, "train"]),
        ({"queued": "FAILED"}, ["describe queued", *RECREATE, *SETUP, "train"]),
        ({"queued": "SUSPENDING"}, ["describe queued", *RECREATE, *SETUP, "train"]),
        ({"queued": "ACTIVE", "nodes": {"pod": "READY"}}, ["describe queued", "describe pod", "train"]),
        ({"queued": "ACTIVE", "nodes": {}}, ["describe queued", "describe pod", *RECREATE, *SETUP, "train"]),
        (
            {"queued": "ACTIVE", "nodes": {"pod": "PREEMPTED"}},
            ["describe queued", "describe pod", *RECREATE, *SETUP, "train"],
        ),
        ({"queued": "DELETING"}, ["describe queued", "describe queued", *REQUEST, *SETUP, "train"]),
        ({"queued": "ACCEPTED", "requested": ["pod"]}, [*["describe queued"] * 3, *SETUP, "train"]),
        ({"queued": None}, ["describe queued", *REQUEST, *SETUP, "train"]),
    ],
    ids=[
        "suspended",
        "failed",
        "suspending",
        "active-ready",
        "active-node-gone",
        "active-node-preempted",
        "deleting",
        "still-queued",
        "none",
    ],
)
def test_resume_queued_from_each_state(play, world, expected):
    result, calls = play(world, "resume", "--queued", *ARGS)
    assert result.returncode == 0, result.stderr
    assert calls == expected
    (train,) = [c for c in _printed(result.stdout) if "bin/rpo-jax train" in " ".join(c)]
    assert "--steps 5 --resume" in _remote(train) and "mesh.dcn_data" not in _remote(train)


def test_recreated_queued_resource_is_requested_as_before(play, fake_env):
    result, _ = play({"queued": "SUSPENDED"}, "resume", "--queued", *ARGS)
    assert result.returncode == 0, result.stderr
    (create,) = [c for c in _calls(fake_env) if c[3:5] == ["queued-resources", "create"]]
    assert create[5:] == [
        "pod",
        "--zone=us-east5-a",
        "--node-id=pod",
        "--accelerator-type=v5p-8",
        "--runtime-version=v2-alpha-tpuv5",
        "--spot",
    ]
    assert "--force" in [c for c in _calls(fake_env) if c[3:5] == ["queued-resources", "delete"]][0]
    assert "queued resource pod is SUSPENDED (preempted, or never provisioned): deleting it" in result.stdout


def test_request_that_fails_while_waiting_stops_with_its_state(play):
    result, calls = play({"queued": None, "next": {"ACCEPTED": "FAILED"}}, "resume", "--queued", *ARGS)
    assert result.returncode == 2
    assert "queued resource pod is FAILED instead of ACTIVE" in result.stderr
    assert calls == ["describe queued", "create queued", "describe queued", "describe queued"]


MULTI = ["describe queued", "delete queued", "describe queued", "describe queued", "create queued"]


@pytest.mark.parametrize(
    ("world", "expected"),
    [
        ({"queued": "SUSPENDED"}, [*MULTI, *["describe queued"] * 3, *SETUP, "train"]),
        (
            {"queued": "ACTIVE", "nodes": {"pod-0": "READY", "pod-1": "READY"}},
            ["describe queued", "describe pod-0", "describe pod-1", "train"],
        ),
        (
            {"queued": "ACTIVE", "nodes": {"pod-0": "READY"}},
            [
                "describe queued",
                "describe pod-0",
                "describe pod-1",
                *MULTI[1:],
                *["describe queued"] * 3,
                *SETUP,
                "train",
            ],
        ),
    ],
    ids=["suspended", "active-ready", "active-slice-gone"],
)
def test_multislice_resume(play, fake_env, world, expected):
    """--num-slices 2: one queued resource of two slices (pod-0, pod-1), workers reached through it on every node,
    and the trainer told to lay its data axis over both (mesh.dcn_data=2)."""
    result, calls = play(world, "resume", "--num-slices", "2", *ARGS)
    assert result.returncode == 0, result.stderr
    assert calls == expected
    gcloud = [c for c in _calls(fake_env) if c[0] == "gcloud"]
    for create in [c for c in gcloud if c[3:5] == ["queued-resources", "create"]]:
        assert "--node-count=2" in create and "--node-prefix=pod" in create and not any("node-id" in a for a in create)
    for call in [c for c in gcloud if c[4] in ("ssh", "scp")]:
        assert call[3] == "queued-resources" and "--node=all" in call and "--worker=all" in call, call
    (train,) = [_remote(c) for c in gcloud if c[4] == "ssh" and "bin/rpo-jax train" in _remote(c)]
    assert " --resume " in train and "--set mesh.dcn_data=2" in train


def test_multislice_dry_run_prints_the_request_and_runs_nothing(fake_env):
    result = _run(TPU, "all", "--dry-run", "--num-slices", "2", "--accelerator-type", "v5p-16", *ARGS, env=fake_env)
    assert result.returncode == 0, result.stderr
    assert _calls(fake_env) == []
    cmds = _printed(result.stdout)
    assert [c for c in cmds if c[3:5] == ["queued-resources", "create"]] == [
        [
            *("gcloud", "compute", "tpus", "queued-resources", "create", "pod", "--zone=us-east5-a"),
            *("--node-count=2", "--node-prefix=pod", "--accelerator-type=v5p-16", "--runtime-version=v2-alpha-tpuv5"),
            "--spot",
        ]
    ]
    assert not [c for c in cmds if c[3] == "tpu-vm"], "every worker is reached through the queued resource"
    assert "TPU pod (2 x v5p-16" in result.stdout and "queued=1" in result.stdout


def test_num_slices_must_be_a_positive_integer(fake_env):
    for bad in ("0", "two", "-1"):
        result = _run(TPU, "create", "--dry-run", "--num-slices", bad, env=fake_env)
        assert result.returncode == 2 and "--num-slices must be a positive integer" in result.stderr
