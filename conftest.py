"""Loads the parity harness's pytest plugin (options, the `parity` fixture, golden regeneration, reports)."""

import pytest

pytest_plugins = ["rvc_mlx.testing.plugin", "pytester"]


@pytest.fixture(autouse=True)
def _subprocesses_are_not_xdist_workers(monkeypatch):
    """Under pytest-xdist, a pytest a test starts in a subprocess would inherit the worker's PYTEST_XDIST_*
    variables, and pytest-benchmark would then disable itself there."""
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def store(parity):
    """The golden store the session judges against (--golden-dir)."""
    return parity.store


@pytest.fixture(scope="session")
def policy(parity):
    """The tolerance policy of that store (golden/tolerances.toml)."""
    return parity.policy
