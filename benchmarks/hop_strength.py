"""Hop-strength throughput: the jitted kernel vs a NumPy vectorised version vs the double loop.

ViT-B/16-shaped attention (197 tokens: CLS + 14x14 patches; 12 layers x 12 heads) for ``--images``
images, generated on the fly in chunks of ``--chunk`` images (softmax of random logits with a
random temperature per head), so memory stays bounded by one chunk. Throughput is in
heads x images per second; generating the attention is not timed.

- ``jax``: :func:`jaxvit_interp.strength.hop_strength_kernel` on each chunk, plus fetching its
  results and the row checks on the host (what :func:`strength_over_images` does per batch).
- ``numpy``: the same ring-matrix formulation in NumPy (a batched ``matmul`` against the ring
  weights, BLAS underneath), run on every chunk.
- ``loop``: :func:`jaxvit_interp.strength.reference.hop_strength_loop`, the plain Python double
  loop over patches, timed on the first ``--loop-heads`` heads only and extrapolated.

Run: ``python benchmarks/hop_strength.py`` (``--images 16`` for a quick look).
"""

from __future__ import annotations

import argparse
import functools
import platform
import resource
import time

import jax
import numpy as np

from jaxvit_interp.strength import hop_rings, hop_strength_kernel
from jaxvit_interp.strength.measure import check_rows
from jaxvit_interp.strength.reference import hop_strength_loop

GRID, PATCH, LAYERS, HEADS = (14, 14), 16, 12, 12
TOKENS = GRID[0] * GRID[1] + 1
FIELDS = ("strength", "mass", "patch_to_cls", "cls_to_patch", "distance", "head_entropy")


def relative_difference(got, expected) -> float:
    """Largest ``|got - expected|`` relative to the largest ``|expected|`` of the field."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    return float(np.nanmax(np.abs(got - expected)) / np.nanmax(np.abs(expected)))


@functools.partial(jax.jit, static_argnums=1)
def make_chunk(key, chunk: int):
    """``[chunk, layer, head, N, N]`` softmax attention, some heads peaked and some flat."""
    k_logits, k_temp = jax.random.split(key)
    shape = (chunk, LAYERS, HEADS, TOKENS, TOKENS)
    temperature = jax.random.uniform(k_temp, (chunk, LAYERS, HEADS, 1, 1), minval=0.1, maxval=8.0)
    return jax.nn.softmax(jax.random.normal(k_logits, shape) * temperature, axis=-1)


def numpy_hop_strength(attention: np.ndarray, weights: np.ndarray, strength_weights: np.ndarray):
    """NumPy version of the kernel for ``[head, N, N]`` attention with a CLS token.

    Returns ``(strength, mass, patch_to_cls, cls_to_patch, distance, head_entropy, row_sums)``,
    the first six in the order of ``FIELDS``.
    """
    k = strength_weights.shape[1]
    rows = attention[:, 1:, :].transpose(1, 0, 2)  # [P, head, N]
    cols = np.matmul(rows, weights)  # [P, head, K + 2]: one GEMM per query patch
    hop_mass = cols[..., :k]
    patch_mass = hop_mass.sum(-1)
    strength = (hop_mass * strength_weights[:, None, :]).sum(0)
    mass = hop_mass.mean(0)
    total = strength.sum(-1, keepdims=True)
    p = strength / np.where(total > 0, total, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        head_entropy = np.where(total[:, 0] > 0, -np.where(p > 0, p * np.log(p), 0).sum(-1), np.nan)
        per_query = np.where(patch_mass > 0, cols[..., k] / patch_mass, 0)
        counted = (patch_mass > 0).sum(0)
        distance = np.where(counted > 0, per_query.sum(0) / counted, np.nan)
    patch_to_cls = cols[..., k + 1].mean(0)
    cls_to_patch = attention[:, 0, 1:].sum(-1)
    row_sums = np.concatenate(
        [attention[:, 0].sum(-1)[:, None], (patch_mass + cols[..., k + 1]).T], 1
    )
    return strength, mass, patch_to_cls, cls_to_patch, distance, head_entropy, row_sums


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=8, help="images generated at a time")
    parser.add_argument("--loop-heads", type=int, default=24, help="heads timed with the loop")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    chunk = args.chunk
    if args.images % args.chunk:
        parser.error("--images must be a multiple of --chunk")

    rings = hop_rings(GRID, has_cls_token=True, patch_size=PATCH)
    weights = np.asarray(rings.weights)
    strength_weights = np.asarray(rings.strength_weights)
    heads_per_chunk = chunk * LAYERS * HEADS
    total_heads = args.images * LAYERS * HEADS
    chunk_bytes = heads_per_chunk * TOKENS * TOKENS * 4
    key = jax.random.PRNGKey(args.seed)

    # Compile the generator and the kernel before timing.
    first = make_chunk(key, chunk)
    jax.block_until_ready(hop_strength_kernel(first, rings))

    t_jax = t_numpy = t_generate = 0.0
    max_diff = 0.0
    for c in range(args.images // chunk):
        t0 = time.perf_counter()
        attention = jax.block_until_ready(make_chunk(jax.random.fold_in(key, c), chunk))
        t_generate += time.perf_counter() - t0

        t0 = time.perf_counter()
        result, row_sums, row_min = jax.device_get(hop_strength_kernel(attention, rings))
        check_rows(row_sums, row_min, attention.shape)
        t_jax += time.perf_counter() - t0

        host = np.asarray(attention).reshape(-1, TOKENS, TOKENS)
        t0 = time.perf_counter()
        expected = numpy_hop_strength(host, weights, strength_weights)
        t_numpy += time.perf_counter() - t0
        got = [
            getattr(result, f).reshape(heads_per_chunk, *getattr(result, f).shape[3:])
            for f in FIELDS
        ]
        max_diff = max(
            max_diff, *(relative_difference(g, e) for g, e in zip(got, expected[:6], strict=True))
        )
        if c == 0:
            loop_input = host[: args.loop_heads].copy()
            loop_jax = [g[: args.loop_heads] for g in got]
        del attention, host

    t0 = time.perf_counter()
    loop = [hop_strength_loop(a, GRID, patch_size=(PATCH, PATCH)) for a in loop_input]
    t_loop_subset = time.perf_counter() - t0
    loop_diff = max(
        relative_difference(g, np.array([r[f] for r in loop]))
        for f, g in zip(FIELDS, loop_jax, strict=True)
    )
    t_loop = t_loop_subset / args.loop_heads * total_heads

    rate = lambda seconds: total_heads / seconds  # noqa: E731
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    print(
        f"# hop strength: {args.images} images x {LAYERS}x{HEADS} heads, {TOKENS} tokens "
        f"(grid {GRID[0]}x{GRID[1]}), chunks of {chunk} images"
    )
    print(
        f"machine: {platform.machine()}, {jax.device_count()} x {jax.devices()[0].device_kind}, "
        f"jax {jax.__version__}, numpy {np.__version__}"
    )
    print(f"| method | heads x images / s | time for {args.images} images | vs loop |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| jax kernel (jit) | {rate(t_jax):,.0f} | {t_jax:.2f} s | {t_loop / t_jax:,.0f}x |")
    print(
        f"| numpy (same ring matmul) | {rate(t_numpy):,.0f} | {t_numpy:.2f} s | "
        f"{t_loop / t_numpy:,.0f}x |"
    )
    print(
        f"| python double loop | {rate(t_loop):,.1f} | {t_loop:,.0f} s (extrapolated from "
        f"{args.loop_heads} heads, {t_loop_subset:.2f} s) | 1x |"
    )
    print(f"jax vs numpy: {t_numpy / t_jax:.2f}x faster")
    print(
        f"agreement (largest difference relative to the field's largest value): jax vs numpy "
        f"{max_diff:.1e}, jax vs loop {loop_diff:.1e} (on {args.loop_heads} heads)"
    )
    chunk_mib = chunk_bytes / 2**20
    print(
        f"memory: peak RSS {peak_mib:,.0f} MiB; one chunk of attention {chunk_mib:,.0f} MiB; "
        f"all {args.images} images at once would be "
        f"{chunk_bytes * args.images / chunk / 2**30:,.1f} GiB"
    )
    print(f"(generating the attention, not timed: {t_generate:.2f} s)")


if __name__ == "__main__":
    main()
