"""Random models shared by the explanation tests: fixtures that return a builder drawing from the
test's own ``rng``, called as ``config, params = random_model(**fields)``."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from families import SMALL  # noqa: I001  (tests/model is on sys.path via tests/conftest.py)

from jaxvit_interp.model import ViTConfig, init_params


@pytest.fixture
def random_model(rng):
    """``(**fields) -> (ViTConfig(**fields), params)``: every leaf drawn in NumPy (biases, norms
    and tokens too, which initialisation leaves at 0 or 1 and so would hide mistakes in the code
    that uses them). ``jax.eval_shape`` gives the shapes without compiling the initialiser,
    which takes seconds per configuration."""

    def build(**fields):
        config = ViTConfig(**fields)
        shapes = jax.eval_shape(lambda: init_params(config, 0))

        def draw(path, leaf):
            if leaf.ndim < 2:  # biases, norms, tokens: around 1 for scales, 0 otherwise
                base = 1.0 if "scale" in jax.tree_util.keystr(path) else 0.0
                return (base + 0.2 * rng.normal(size=leaf.shape)).astype(np.float32)
            fan_in = np.prod(leaf.shape[:-1])
            return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

        return config, jax.tree_util.tree_map_with_path(draw, shapes)

    return build


@pytest.fixture
def jittered_model(rng):
    """``(**fields) -> (ViTConfig(**fields), params)``: the initialiser's parameters (a random
    seed) with every one moved by a normal draw of scale 0.2, biases, norms and special tokens
    too."""

    def build(**fields):
        config = ViTConfig(**fields)
        params = jax.tree.map(
            lambda p: np.asarray(p) + 0.2 * rng.normal(size=p.shape).astype(np.float32),
            init_params(config, int(rng.integers(1 << 30))),
        )
        return config, params

    return build


@pytest.fixture
def small_classifier(random_model):
    """``(**fields) -> (config, params)``: :func:`random_model` of the small family model with a
    24-wide MLP and 5 classes, ``fields`` changing any of them."""
    return lambda **fields: random_model(**{**SMALL, "mlp_dim": 24, "num_classes": 5, **fields})
