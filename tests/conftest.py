"""Test setup, before JAX is imported anywhere: 8 simulated CPU devices, rank promotion raises."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Implicit rank promotion ([B, L] + [L]) hides shape bugs: every test, and every CLI subprocess it starts (they
# inherit the environment), raises on it instead.
os.environ["JAX_NUMPY_RANK_PROMOTION"] = "raise"


import pytest  # noqa: E402  (after the environment is set)


@pytest.fixture
def fake_env(tmp_path):
    """Launch-script tests: fake gcloud/git on PATH (see launch_fixtures.py)."""
    from launch_fixtures import fake_environment

    return fake_environment(tmp_path)


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """A GCS emulator (fake-gcs-server, from the `test` extra) on a free local port, with one bucket; started once."""
    from gcs_fixtures import GcsEmulator

    emulator = GcsEmulator(tmp_path_factory.mktemp("gcs"))
    yield emulator
    emulator.stop()
