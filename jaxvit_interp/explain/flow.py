"""Attention flow (Abnar & Zuidema 2020): how much of the read token can flow from each patch.

The layers make a graph of ``(L + 1) x N`` nodes, token ``t`` at level ``l`` (level 0 is the
input, level ``l + 1`` the output of block ``l``), with an edge from token ``j`` at level ``l``
to token ``i`` at level ``l + 1`` of capacity ``R_l[i, j]``, where ``R_l = w I + (1 - w) mean_h
A_l`` is rollout's step (:mod:`jaxvit_interp.rollout.kernels`, ``w = residual_weight``). The map
value of patch ``p`` is the maximum flow from the input node of ``p`` to the node the classifier
reads at level ``L``:

- with a CLS token, the CLS node (whose in-capacity is 1, so values lie in ``[0, 1]``);
- without one, a super-sink fed by every patch node at level ``L`` with unbounded capacity,
  the flow divided by the number of patches ``P``: rollout's mean-of-patch-rows read, on the
  same scale (its in-capacity is 1 in all).

Unlike rollout, which sums every path's product, flow is limited by the narrowest cut, so it
spreads less over the image.

The attention comes from the compiled attention pass (:mod:`jaxvit_interp.attention_pass`: a
reducer gives each image's ``[L, N, N]`` steps); the max-flow runs on the host, one batch's
images at a time, with ``scipy.sparse.csgraph.maximum_flow`` (Dinic) on integer capacities:
each capacity is rounded to a multiple of ``2^-20`` (:data:`RESOLUTION`), so a value is exact
for that rounded graph and within a few ``1e-6`` (at most ``2^-21`` per edge of the minimum cut)
of the real-valued flow. One call per patch solves it for every image of the batch at once: the
images' graphs are disjoint and a super-source feeds patch ``p`` of each, so the flow through
each feeding edge is that image's value.

Cost: ``P`` max-flows on a graph of ``L N^2`` edges per image, on the host. On the 2-core
development CPU, loaded (benchmarks/RESULTS.md, "Attention flow"): 0.01 s per image at 17 tokens
and 6 layers, 0.13 s at 65 tokens and 6 layers (the digits model), 0.3 s at 65 and 12, 7 s at
197 tokens and 6 layers and 26 s at 197 and 12 (ViT-B/16): usable for a handful of ViT-B/16
images, too slow for a data set there (rollout is the fast approximation).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvit_interp.attention_pass import reduce_over_images
from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution
from jaxvit_interp.importance.validate import check_images, check_unpruned
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.rollout.kernels import RESIDUAL_WEIGHT

__all__ = ["RESOLUTION", "AttentionFlowReducer", "attention_flow", "flow_maps"]

# Capacities are integers in units of RESOLUTION.
RESOLUTION = 2.0**-20
# The most scipy's int32 flow arithmetic may carry in one call (the total over the images).
_MOST_FLOW = 2**31 - 1
# The most edges one solve's graph holds (about 50 MB with its flows): some ViT-B/16 images.
_MOST_EDGES = 1 << 22


def layer_steps(attention: jax.Array, residual_weight: float) -> jax.Array:
    """``[..., L, H, N, N]`` attention -> ``[..., L, N, N]`` rollout's steps ``w I + (1 - w)
    mean_h A``: the capacities of the flow graph."""
    n = attention.shape[-1]
    mixed = jnp.mean(attention, axis=-3)
    return residual_weight * jnp.eye(n, dtype=mixed.dtype) + (1.0 - residual_weight) * mixed


def flow_maps(
    steps: np.ndarray, grid: tuple[int, int], num_prefix: int, has_cls_token: bool
) -> np.ndarray:
    """Attention flow maps ``[image, Gh, Gw]`` float32 of rollout steps ``[image, L, N, N]``.

    ``num_prefix`` special tokens come before the patches; the read node is CLS (token 0) when
    ``has_cls_token``, else a super-sink fed by every patch, its flow divided by ``P``.
    """
    images, _, n, _ = steps.shape
    patches = n - num_prefix
    units = np.rint(np.asarray(steps, np.float64) / RESOLUTION).astype(np.int64)  # [b, L, i, j]
    # Out-capacity of each input patch node (a column sum of the first step): its flow's bound.
    feeds = units[:, 0].sum(axis=1)[:, num_prefix:]
    edges = np.count_nonzero(units.reshape(images, -1), axis=1)
    out = np.zeros((images, patches), np.float64)
    # Images share one solve while the flows fit scipy's int32 and the graph a modest size.
    start = 0
    while start < images:
        stop = start + 1
        while (
            stop < images
            and feeds[start : stop + 1].max(axis=1).sum() <= _MOST_FLOW
            and edges[start : stop + 1].sum() <= _MOST_EDGES
        ):
            stop += 1
        out[start:stop] = _flows_of_group(
            units[start:stop], feeds[start:stop], num_prefix, has_cls_token
        )
        start = stop
    scale = RESOLUTION / (1 if has_cls_token else patches)
    return (out * scale).reshape(images, *grid).astype(np.float32)


def _flows_of_group(
    units: np.ndarray, feeds: np.ndarray, num_prefix: int, has_cls_token: bool
) -> np.ndarray:
    """Max-flow of every patch of a few images, ``[image, patch]`` in resolution units, from
    their integer capacities ``units`` ``[image, L, N, N]`` and input patch out-capacities
    ``feeds`` ``[image, patch]``.

    The images' graphs are disjoint parts of one graph, nodes ``image * (L + 1) N + level N +
    token``, then a super-source and a super-sink. The sink is fed by each image's read nodes
    at level ``L`` (CLS, or every patch) with their in-capacity (never the bottleneck); the
    source feeds each image's input patch node, and one ``maximum_flow`` per patch ``p`` opens
    only the edges to patch ``p``, with its out-capacity.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_flow

    count, layers, n, _ = units.shape
    patches = n - num_prefix
    nodes = (layers + 1) * n
    source, sink = count * nodes, count * nodes + 1
    image, level, i, j = np.nonzero(units)  # an edge (level, j) -> (level + 1, i)
    first_node = np.arange(count)[:, None] * nodes
    read = np.array([0]) if has_cls_token else np.arange(num_prefix, n)
    read_nodes = first_node + layers * n + read  # [image, read]
    feed_nodes = first_node + num_prefix + np.arange(patches)  # [image, patch]
    rows = [image * nodes + level * n + j, read_nodes.ravel(), np.full(feed_nodes.size, source)]
    cols = [image * nodes + (level + 1) * n + i, np.full(read_nodes.size, sink), feed_nodes.ravel()]
    caps = [
        units[image, level, i, j],
        units[:, -1].sum(axis=2)[:, read].ravel(),
        np.zeros(feed_nodes.size, np.int64),  # opened one patch at a time below
    ]
    graph = csr_matrix(
        (np.concatenate(caps).astype(np.int32), (np.concatenate(rows), np.concatenate(cols))),
        shape=(sink + 1, sink + 1),
    )
    graph.sort_indices()
    # The source's row: its columns ascend, so image-major then patch, as feed_nodes.
    opened = graph.data[graph.indptr[source] : graph.indptr[source + 1]]
    if opened.size != feed_nodes.size:
        raise AssertionError("the super-source's edges were merged or dropped")
    out = np.zeros((count, patches), np.float64)
    for p in range(patches):
        opened[:] = 0
        opened.reshape(count, patches)[:, p] = feeds[:, p]
        flow = maximum_flow(graph, source, sink).flow
        out[:, p] = flow[source, feed_nodes[:, p]].toarray().ravel()
    return out


@dataclasses.dataclass(frozen=True)
class AttentionFlowReducer:
    """The flow graph's capacities as a reducer of the attention pass: each image's ``[L, N,
    N]`` steps leave the compiled program, and ``finish`` turns a batch of them into its flow
    maps on the host (``map [batch, Gh, Gw]``), so only one batch's graphs are ever held."""

    grid: tuple[int, int]
    num_prefix: int
    has_cls_token: bool
    residual_weight: float = RESIDUAL_WEIGHT
    name: str = "attention_flow"

    def __call__(self, config: ViTConfig, out) -> dict[str, jax.Array]:
        return {"steps": layer_steps(out.attention, self.residual_weight)}

    def finish(self, outputs: dict[str, np.ndarray], start: int) -> dict[str, np.ndarray]:
        steps = outputs["steps"]
        return {"map": flow_maps(steps, self.grid, self.num_prefix, self.has_cls_token)}


def attention_flow(
    config: ViTConfig,
    params: Any,
    images,
    *,
    execution: Execution | None = None,
    residual_weight: float = RESIDUAL_WEIGHT,
) -> np.ndarray:
    """Attention flow maps ``[image, Gh, Gw]`` float32 of preprocessed ``images`` (module
    docstring: the graph, the read node, the resolution, the cost).

    Args:
      config, params: the model (unpruned: the flow averages every head of each layer).
      images: ``[image, height, width, channels]`` preprocessed.
      execution: batching, devices and progress of the attention pass; None: the defaults.
      residual_weight: ``w`` of each layer's step ``w I + (1 - w) mean_h A`` (rollout's 1/2).
    """
    check_unpruned(config, "attention_flow")
    if not 0.0 <= residual_weight <= 1.0:
        raise InputError(f"residual_weight must lie in [0, 1], got {residual_weight!r}")
    images = check_images(config, images)
    reducer = AttentionFlowReducer(
        config.grid, config.num_prefix_tokens, config.has_cls_token, float(residual_weight)
    )
    out = reduce_over_images(config, params, images, reducer, execution, desc="attention flow")
    return out["map"]
