import os

import gin
import pytest
import torch
from helpers import load_script


@pytest.fixture(autouse=True)
def _fresh_gin_config():
    """Every test starts and ends with no gin bindings."""
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture
def two_threads():
    """Cap torch at 2 threads (the CI machine's cores) for the heavier end-to-end tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_thread():
    """Cap torch at 1 thread for a module of toy-sized tests: they gain nothing from intra-op threads,
    and spinning threads crawl on a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _learning_benchmark(name: str):
    """benchmarks/learning/{name}.py as a module."""
    return load_script(os.path.join("benchmarks", "learning", f"{name}.py"), name)


@pytest.fixture(scope="session")
def suite():
    return _learning_benchmark("suite")


@pytest.fixture(scope="session")
def contextual_bandit(suite):
    return _learning_benchmark("contextual_bandit")


@pytest.fixture(scope="session")
def ml1_goals():
    return _learning_benchmark("ml1_goals")
