import os
import secrets
import sys

import numpy as np
import pytest

# Reference implementations shared by tests live beside them.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "model"))


@pytest.fixture
def rng(request):
    """A NumPy generator with a fresh seed each run; the seed is printed so a failure can be replayed."""
    seed = int(os.environ.get("JAXVIT_TEST_SEED", secrets.randbits(32)))
    print(f"{request.node.name}: JAXVIT_TEST_SEED={seed}")
    return np.random.default_rng(seed)
