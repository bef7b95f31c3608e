"""Fixtures shared by the test modules."""

import pytest
import torch

try:
    # Imported here, before any test sets TRITON_INTERPRET: Triton decorates its own library
    # functions in the mode of its first import, and a first import in interpreter mode breaks
    # compiled kernels later in the same process (the GPU test run mixes both).
    import triton  # noqa: F401
except ImportError:
    pass


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny ops on one intra-op thread: on a loaded 2-core machine a second OpenMP
    thread only adds spin-waiting (measured: 2 ms -> 130 ms per batch-256 MLP backward)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
