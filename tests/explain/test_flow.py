"""Attention flow against networkx's max-flow on the same graph built independently from a plain
forward pass's attention, on a graph small enough to check by hand, and on every family."""

import networkx as nx
import numpy as np
import pytest
from families import CASES, SMALL  # noqa: I001  (tests/model is on sys.path via conftest)

from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution
from jaxvit_interp.explain.flow import attention_flow, flow_maps
from jaxvit_interp.model import run_model

QUIET = Execution(progress=False, batch_size=2)
# Capacities are rounded to 2^-20: a few cut edges' rounding.
ATOL = 1e-5


def networkx_flow(attention, num_prefix, has_cls_token, w=0.5):
    """[L, H, N, N] -> [P] max-flow values of networkx's preflow-push on float capacities."""
    layers, _, n, _ = attention.shape
    graph = nx.DiGraph()
    for layer in range(layers):
        step = w * np.eye(n) + (1 - w) * attention[layer].mean(axis=0)
        for i in range(n):
            for j in range(n):
                graph.add_edge((layer, j), (layer + 1, i), capacity=float(step[i, j]))
    if has_cls_token:
        sink, scale = (layers, 0), 1.0
    else:
        sink, scale = "pooled", 1.0 / (n - num_prefix)
        for t in range(num_prefix, n):
            graph.add_edge((layers, t), sink)  # no capacity: unbounded
    return np.array(
        [nx.maximum_flow_value(graph, (0, t), sink) * scale for t in range(num_prefix, n)]
    )


def test_a_graph_checked_by_hand(rng):
    # Tokens [CLS, patch], two layers: patch -> CLS -> CLS carries min(R0[0,1], R1[0,0]), and
    # patch -> patch -> CLS min(R0[1,1], R1[0,1]).
    r0, r1 = rng.uniform(0.05, 1, (2, 2, 2))
    got = flow_maps(np.stack([r0, r1])[None], (1, 1), 1, True)
    want = min(r0[0, 1], r1[0, 0]) + min(r0[1, 1], r1[0, 1])
    np.testing.assert_allclose(got.ravel(), [want], atol=ATOL)
    # One layer: the single edge from each patch to CLS.
    step = rng.uniform(0, 1, (1, 4, 4))
    got = flow_maps(step[None], (1, 3), 1, True)
    np.testing.assert_allclose(got.ravel(), step[0, 0, 1:], atol=ATOL)


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_flow_equals_networkx_on_the_models_attention(rng, random_model, classifier):
    config, params = random_model(
        **{
            **SMALL,
            "num_layers": int(rng.integers(2, 4)),
            "mlp_dim": 24,
            "num_classes": 3,
            "classifier": classifier,
        },
    )
    images = rng.normal(size=(3, *config.image_size, 3)).astype(np.float32)
    w = float(rng.uniform(0.2, 0.8))
    got = attention_flow(config, params, images, execution=QUIET, residual_weight=w)
    attention = np.asarray(run_model(config, params, images).attention, np.float64)
    want = np.stack(
        [networkx_flow(a, config.num_prefix_tokens, config.has_cls_token, w) for a in attention]
    )
    assert got.shape == (3, *config.grid)
    np.testing.assert_allclose(got.reshape(3, -1), want, atol=ATOL)


@pytest.mark.parametrize("family", sorted(CASES))
def test_every_family(rng, random_model, family):
    config, params = random_model(**SMALL, **CASES[family])
    images = rng.normal(size=(2, *config.image_size, config.channels)).astype(np.float32)
    got = attention_flow(config, params, images, execution=QUIET)
    assert got.shape == (2, *config.grid)
    assert np.isfinite(got).all() and (got >= 0).all() and (got <= 1 + ATOL).all()


def test_bad_input_is_refused(rng, random_model):
    config, params = random_model(**{**SMALL, "mlp_dim": 24, "num_classes": 3})
    images = rng.normal(size=(2, *config.image_size, 3)).astype(np.float32)
    with pytest.raises(InputError, match=r"residual_weight must lie in \[0, 1\], got 1.5"):
        attention_flow(config, params, images, residual_weight=1.5)
    with pytest.raises(InputError, match="images have the wrong size"):
        attention_flow(config, params, images[:, :4])
