"""Fixtures of the model tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks run fastest on one thread, and far faster than two threads on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
