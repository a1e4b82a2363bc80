import os
import sys

import pytest

# The helpers module beside this file (tests are imported with importlib, not as a package).
sys.path.insert(0, os.path.dirname(__file__))
from clitools import TINY  # noqa: E402

from jaxvit_interp import init_params, save_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """The tiny 3-class random model, without class names, in the project's own format."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(path, TINY, init_params(TINY, 1))
    return path
