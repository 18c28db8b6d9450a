"""Fixtures of the network tests: one real local Ray instance (num_cpus=2) for the whole session."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance; each test module using it registers itself with
    ``ray.cloudpickle.register_pickle_by_value`` so that the workers need not import the tests."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local test instance only
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()

