"""Time every single-head ablation of a ViT: the batched engine vs the loops people write today.

For each model (random weights, 224 px) and image count this measures, in one process:

  (a) ``jaxvit_interp.head_importance`` (the batched engine; all ablation metrics but ``taylor``),
  (b) a plain JAX loop: one jitted forward pass per pruned head (``head_mask``),
  (c) Hugging Face ``transformers`` on PyTorch CPU: ``ViTForImageClassification`` with
      ``head_mask``
      once per pruned head (after checking the mask really changes the logits),

plus a large float32 matrix product in JAX (and PyTorch) for the machine's attainable rate.  (b) and
(c) run the same full forward pass for every head, so by default they are timed on a sample of
heads spread over all layers and scaled to all heads (``--baseline-heads all`` runs every head).
After compiling, (a), (b) and (c) are timed in turn for ``--rounds`` rounds and the best time of
each is reported, with the ratio of every round.

FLOP counts: "needed" = one full pass plus, for each head of layer ``l``, layers ``l..L-1`` and the
classifier (what an ablation has to recompute when lower layers are reused); "executed" = what the
engine actually runs (it also skips the attention of the pruned layer, folds the pruned head into
that layer's first MLP product, and in the last layer computes the CLS row only, without
projecting any other token).  GFLOP/s figures divide those counts by the engine's time with
compiled programs; the first call, compilation included, is reported next to it.

With ``--ablations zero mean resample`` the engine's whole sweep with each further ablation kind
(its reference: the analysed images for a mean, each image's neighbour for resample) runs in the
same rounds as (a) and is given as a ratio to the zero sweep.

With ``--cpu-devices N`` (N > 1) the host CPU is shown to JAX as N devices, (a) shards the images
over them (as ``analyze`` does over every device) and the same engine on one device is timed beside
it, in the same rounds.

Also: how the engine's time grows with images and with the number of heads ablated, ViT-B/16
figures, peak memory, and on the built-in digits model (when present) the accuracy curves of
cumulative pruning in importance order vs random orders and the rank correlation of ``taylor``
with exact ``prob_drop``.

The FLOP counts and the plain loop are the package's (:mod:`jaxvit_interp.benchmark`), which
``jaxvit-interp benchmark`` runs for the engine against the loop on any device.

Run:  python benchmarks/head_importance.py            (about 10 minutes on a 2-core CPU)
      python benchmarks/head_importance.py --quick    (a smoke run)
      python benchmarks/head_importance.py --variants B/16 --images 256 --no-torch   (a GPU)
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxvit_interp.benchmark import (
    executed_flops,
    fold_flops,
    full_flops,
    needed_flops,
    prepare_jax_loop,
    sample_heads,
)
from jaxvit_interp.benchmark import timed as _timed
from jaxvit_interp.execution import Execution
from jaxvit_interp.importance import (
    cumulative_pruning_accuracy,
    head_importance,
    partial_pruning,
    rank_by_metric,
)
from jaxvit_interp.importance.engine import head_importance_plan
from jaxvit_interp.model import ViTConfig, init_params
from jaxvit_interp.parallel import all_devices_mesh
from jaxvit_interp.quantities import PRUNING_METRICS

QUIET = Execution(progress=False)

# ---------------------------------------------------------------------------------------------
# Measurement helpers.
# ---------------------------------------------------------------------------------------------


class PeakRSS:
    """Peak resident memory of this process while active, sampled every 20 ms."""

    def __enter__(self):
        import psutil

        self._proc = psutil.Process()
        self.start = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def increase(self) -> int:
        return self.peak - self.start


def device_peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def matmul_rate(n: int = 3072, repeats: int = 5) -> float:
    """Best GFLOP/s of an n x n float32 matrix product in JAX."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    f(a, a).block_until_ready()
    best = min(_timed(lambda: f(a, a).block_until_ready()) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def torch_matmul_rate(n: int = 3072, repeats: int = 5) -> float:
    import torch

    a = torch.randn(n, n)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


# ---------------------------------------------------------------------------------------------
# (a) the engine, (b) a JAX loop, (c) transformers on PyTorch.
# ---------------------------------------------------------------------------------------------


def engine_plan(c, params, num_images, mesh=None):
    """The chunk plan ``head_importance`` will use (without taylor)."""
    return head_importance_plan(c, params, Execution(mesh=mesh), num_images=num_images)


def ablation_reference(kind, images):
    """The reference a kind's replacement comes from, as ``analyze`` takes it: the analysed
    images themselves for a mean, each image's neighbour (a shift by one, so no image is its
    own) for resample; None for zero."""
    if kind == "zero":
        return None
    return images if kind == "mean" else np.roll(images, 1, axis=0)


def prepare_engine(c, params, images, mesh=None, ablation="zero"):
    """Compile the engine's programs; returns ``(first, plan, run)``.

    ``first``: seconds of the first call on one chunk of images (compilation included);
    ``plan``: the engine's chunk plan; ``run()``: seconds for all single-head ablations of every
    image with the programs compiled (the chunk shape is the same, so nothing recompiles).
    ``mesh``: shard the images over its devices; None: one device.  ``ablation``: the kind
    (``zero``, ``mean``, ``resample``), its reference from :func:`ablation_reference`.
    """
    plan = engine_plan(c, params, len(images), mesh=mesh)

    def call(x):
        return head_importance(
            c,
            params,
            x,
            metrics=PRUNING_METRICS,
            ablation=ablation,
            reference=ablation_reference(ablation, x),
            execution=Execution(mesh=mesh, progress=False),
        )

    first = _timed(lambda: call(images[: plan.images_per_batch]))
    return first, plan, lambda: _timed(lambda: call(images))


def prepare_torch_loop(c, images, heads):
    """transformers' ViT on PyTorch CPU with ``head_mask``; returns ``(run, changed, versions)``.

    ``run()``: seconds per head over ``heads``.  Checks first that the mask really changes the
    logits (``changed``: the largest change).
    """
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count())
    hf_config = transformers.ViTConfig(
        hidden_size=c.hidden_size,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads,
        intermediate_size=c.mlp_dim,
        image_size=c.image_size[0],
        patch_size=c.patch_size[0],
        num_channels=c.channels,
        num_labels=c.num_classes,
        layer_norm_eps=c.layer_norm_eps,
        hidden_act="gelu_pytorch_tanh" if c.gelu_approximate else "gelu",
        attn_implementation="eager",  # head_mask is applied by the eager attention path
    )
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(hf_config).eval()
    pixels = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    ones = torch.ones(c.num_layers, c.num_heads)

    with torch.inference_mode():
        base = model(pixel_values=pixels).logits
        p = torch.softmax(base, -1)
        mask = ones.clone()
        mask[heads[0]] = 0
        changed = float((model(pixel_values=pixels, head_mask=mask).logits - base).abs().max())
    if not changed > 1e-6:
        raise RuntimeError("transformers ignored head_mask: the pruned logits did not change")

    def one(layer, head):
        mask = ones.clone()
        mask[layer, head] = 0
        q = torch.softmax(model(pixel_values=pixels, head_mask=mask).logits, -1)
        return float((p * (p.log() - q.log())).sum())

    def run():
        with torch.inference_mode():
            t = time.perf_counter()
            for lh in heads:
                one(*lh)
        return (time.perf_counter() - t) / len(heads)

    return run, changed, f"transformers {transformers.__version__} / torch {torch.__version__}"


# ---------------------------------------------------------------------------------------------
# Sections.
# ---------------------------------------------------------------------------------------------


def compare(variant, num_images, baseline_heads, args, matmul_gflops):
    """(a), (b) and (c) timed in turn, ``args.rounds`` times; the best of each is reported.

    Interleaving the rounds exposes all three to the same load on a shared machine, and the
    ratios of each round show how much that load moved them.
    """
    c = ViTConfig.from_variant(variant)
    params = init_params(c, 0)
    images = (
        np.random.default_rng(0)
        .uniform(-1, 1, (num_images, *c.image_size, c.channels))
        .astype(np.float32)
    )
    heads_total = c.num_layers * c.num_heads
    print(
        f"\n## {variant}: {c.num_layers} layers x {c.num_heads} heads = {heads_total} ablations, "
        f"{num_images} images of {c.image_size[0]} px"
    )
    sample = sample_heads(c, None if baseline_heads == "all" else int(baseline_heads))
    note = (
        ""
        if len(sample) == heads_total
        else f" (timed on {len(sample)} heads, scaled to {heads_total})"
    )
    mesh = all_devices_mesh()
    with PeakRSS() as rss:
        first, plan, run_a = prepare_engine(c, params, images, mesh)
        times = {"a": [run_a()]}
    runs = {"a": run_a}
    if mesh is not None:
        # The same engine on one device, in the same rounds: what sharding over the mesh gains.
        runs["a1"] = prepare_engine(c, params, images)[2]
    kinds = [k for k in args.ablations if k != "zero"]
    for kind in kinds:
        # The same sweep with another ablation kind, in the same rounds as the zero sweep (a).
        runs[kind] = prepare_engine(c, params, images, mesh, ablation=kind)[2]
    run_b = prepare_jax_loop(c, params, images, sample)
    runs["b"] = lambda: run_b() * heads_total
    if not args.no_torch:
        run_c, changed, versions = prepare_torch_loop(c, images, sample)
        runs["c"] = lambda: run_c() * heads_total
    if args.trace:
        # One more engine run under the profiler (Perfetto trace, open at ui.perfetto.dev).
        with jax.profiler.trace(args.trace, create_perfetto_trace=True):
            run_a()
        print(f"    profiler trace of one engine run written under {args.trace}")
    for r in range(args.rounds):
        for key, run in runs.items():
            if not (key == "a" and r == 0):  # round 0 of (a) ran with the memory probe
                times.setdefault(key, []).append(run())
    best = {key: min(v) for key, v in times.items()}
    per_round = lambda key: ", ".join(  # noqa: E731
        f"{y / x:.2f}" for x, y in zip(times["a"], times[key], strict=True)
    )
    rounds = lambda key: ", ".join(f"{t:.1f}" for t in times[key])  # noqa: E731
    a = best["a"]
    need = needed_flops(c) * num_images
    done = executed_flops(c) * num_images + fold_flops(c)
    rate_needed, rate_done = need / a / 1e9, done / a / 1e9
    where = "one device" if mesh is None else f"images sharded over {mesh.size} devices"
    print(
        f"(a) engine, {where}: {a:.1f} s compiled, best of {args.rounds} rounds "
        f"({rounds('a')} s); first call on {plan.images_per_batch} image(s), compilation "
        f"included: {first:.1f} s"
    )
    device_peak = device_peak_bytes()
    print(
        f"    chunks: {plan.num_batches} x {plan.images_per_batch} images, "
        f"{plan.num_slot_groups} x {plan.slots_per_group} heads per layer, "
        f"{plan.streams_per_step or 'all'} stream(s) per step; estimated working set "
        f"{plan.estimated_bytes / 2**20:.0f} MiB; peak RSS increase {rss.increase / 2**20:.0f} MiB"
        + (f"; device peak {device_peak / 2**20:.0f} MiB" if device_peak else "")
    )
    print(
        f"    FLOPs needed {need / 1e12:.2f} T ({rate_needed:.1f} GFLOP/s = "
        f"{100 * rate_needed / matmul_gflops:.0f}% of matmul), executed {done / 1e12:.2f} T "
        f"({rate_done:.1f} GFLOP/s = {100 * rate_done / matmul_gflops:.0f}% of matmul)"
    )
    if "a1" in runs:
        print(
            f"    the same engine on one device: {best['a1']:.1f} s, rounds {rounds('a1')} s  "
            f"-> {best['a1'] / a:.2f}x slower (per round {per_round('a1')})"
        )
    for kind in kinds:
        print(
            f"    the same sweep with {kind} ablation: {best[kind]:.1f} s, rounds {rounds(kind)} s"
            f"  -> {best[kind] / a:.2f}x the zero sweep (per round {per_round(kind)})"
        )
    loop_flops = heads_total * full_flops(c) * num_images
    print(
        f"    (b) and (c) run {heads_total} full passes = {loop_flops / 1e12:.2f} TFLOP, "
        f"{loop_flops / done:.2f}x the engine's executed FLOPs: the engine's speed-up over them "
        f"if all three ran at one FLOP rate"
    )
    print(
        f"(b) JAX loop, one jitted forward per head: {best['b']:.1f} s{note}, rounds "
        f"{rounds('b')} s  -> engine {best['b'] / a:.2f}x faster (per round {per_round('b')})"
    )
    row = {
        "variant": variant,
        "images": num_images,
        "a": a,
        "b": best["b"],
        "needed_rate": rate_needed,
        "executed_rate": rate_done,
        "first": first,
        "devices": 1 if mesh is None else mesh.size,
    }
    row.update({kind: best[kind] for kind in kinds})
    if "a1" in runs:
        row["a1"] = best["a1"]
    if "c" in runs:
        print(
            f"(c) {versions} CPU, head_mask per head: {best['c']:.1f} s{note}, rounds "
            f"{rounds('c')} s (mask changes logits by up to {changed:.2e})  -> engine "
            f"{best['c'] / a:.2f}x faster (per round {per_round('c')})"
        )
        row["c"] = best["c"]
    return row


def scaling(args):
    c = ViTConfig.from_variant("S/16")
    params = init_params(c, 0)
    rng = np.random.default_rng(1)
    mesh = all_devices_mesh()
    print(
        "\n## Scaling of the engine (ViT-S/16, compiled programs; images over "
        f"{1 if mesh is None else mesh.size} device(s), heads on one device)"
    )
    counts = sorted(args.scaling_images)
    images = rng.uniform(-1, 1, (max(counts), *c.image_size, 3)).astype(np.float32)

    def run(x):
        return head_importance(
            c, params, x, metrics=PRUNING_METRICS, execution=Execution(mesh=mesh, progress=False)
        )

    compiled = set()  # chunk sizes whose programs exist already
    for n in counts:
        plan = engine_plan(c, params, n, mesh=mesh)
        if plan.images_per_batch not in compiled:
            run(images[: plan.images_per_batch])
            compiled.add(plan.images_per_batch)
        t = _timed(lambda n=n: run(images[:n]))
        print(
            f"   {n:3d} images, 72 heads: {t:.1f} s ({t / n:.2f} s per image; "
            f"{plan.num_batches} chunk(s) of {plan.images_per_batch})"
        )
    few = images[: args.scaling_head_images]
    for count in args.scaling_heads:
        heads = sample_heads(c, count)

        def run_heads(heads=heads):
            return partial_pruning(c, params, few, heads=heads, modes=("head",), execution=QUIET)

        run_heads()  # compile
        t = _timed(run_heads)
        print(
            f"   {len(few)} image(s), {count:3d} heads (whole-head pruning): {t:.1f} s "
            f"({t / count:.3f} s per head)"
        )


def digits_section():
    try:
        from jaxvit_interp.data.digits import load_digits, load_digits_model

        config, params = load_digits_model()
    except (ImportError, FileNotFoundError) as e:
        print(f"\n## Digits: skipped ({e})")
        return
    from scipy.stats import spearmanr

    train_x, train_y = load_digits("train")
    test_x, test_y = load_digits("test")
    result = head_importance(config, params, train_x, train_y, execution=QUIET)
    heads = config.num_layers * config.num_heads
    print(
        f"\n## Digits model ({config.num_layers} layers x {config.num_heads} heads), importance on "
        f"{len(train_y)} training images, accuracy on {len(test_y)} held-out images"
    )
    curves = {}
    for metric in ("prob_drop", "kl", "taylor"):
        order = rank_by_metric(result, metric)[::-1]  # least important first
        curves[metric] = cumulative_pruning_accuracy(config, params, test_x, test_y, order)
    rng = np.random.default_rng(0)
    randoms = [
        cumulative_pruning_accuracy(
            config,
            params,
            test_x,
            test_y,
            np.asarray(
                [(layer, h) for layer in range(config.num_layers) for h in range(config.num_heads)]
            )[rng.permutation(heads)],
        )
        for _ in range(5)
    ]
    fmt = lambda v: " ".join(f"{x:.2f}" for x in v)  # noqa: E731
    print("heads pruned: " + " ".join(f"{k:4d}" for k in range(heads + 1)))
    for metric, curve in curves.items():
        print(f"{metric:>9s} order: {fmt(curve)}  (area {curve.mean():.3f})")
    for i, curve in enumerate(randoms):
        print(f"random order {i}: {fmt(curve)}  (area {curve.mean():.3f})")
    print(f"random mean area {np.mean([r.mean() for r in randoms]):.3f}")
    flat = lambda m: result[m].reshape(len(train_y), -1)  # noqa: E731
    global_rho = spearmanr(result.taylor.mean(0).ravel(), result.prob_drop.mean(0).ravel())[0]

    def per_image(values):
        rhos = [spearmanr(t, v)[0] for t, v in zip(flat("taylor"), values, strict=True)]
        return np.nanmedian(rhos)

    drops = flat("prob_drop")
    print(
        f"Spearman(taylor, prob_drop): of the global means {global_rho:.3f}; per image (median) "
        f"{per_image(drops):.3f}, against |prob_drop| {per_image(np.abs(drops)):.3f}"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=["S/16", "B/16"])
    parser.add_argument(
        "--images",
        nargs="+",
        type=int,
        default=[8, 2],
        help="images per variant (the last value repeats)",
    )
    parser.add_argument(
        "--baseline-heads",
        nargs="+",
        default=["12", "6"],
        help="heads to time (b), (c) on per variant, or 'all' (the last value repeats)",
    )
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument(
        "--ablations",
        nargs="+",
        default=["zero"],
        choices=["zero", "mean", "resample"],
        help="ablation kinds to time: each kind's whole sweep runs in the same rounds as the zero "
        "sweep (a), and its time is given as a ratio to it (target: within 1.2x)",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="timing rounds of (a), (b), (c) in turn"
    )
    parser.add_argument(
        "--trace", metavar="DIR", help="write a jax.profiler trace of one engine run per variant"
    )
    parser.add_argument("--scaling-images", nargs="*", type=int, default=[4, 8, 16])
    parser.add_argument("--scaling-heads", nargs="*", type=int, default=[18, 36, 72])
    parser.add_argument("--scaling-head-images", type=int, default=1)
    parser.add_argument("--no-digits", action="store_true")
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes")
    parser.add_argument(
        "--cpu-devices",
        type=int,
        default=1,
        metavar="N",
        help="show the host CPU to JAX as N devices (XLA's host device count); with N > 1, (a) "
        "shards images over them and the same engine on one device is timed beside it",
    )
    args = parser.parse_args()
    if args.cpu_devices < 1:
        parser.error(f"--cpu-devices must be at least 1, got {args.cpu_devices}")
    if args.cpu_devices > 1:
        # Read when JAX starts its backends, which nothing above has done yet.
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = (
            f"{flags} --xla_force_host_platform_device_count={args.cpu_devices}".strip()
        )
    if args.quick:
        args.variants, args.images, args.baseline_heads = ["S/16"], [2], ["3"]
        args.scaling_images, args.scaling_heads = [1, 2], [6, 12]
        args.scaling_head_images, args.rounds = 1, 1

    start = time.perf_counter()
    print(
        f"# Head-importance benchmark: jax {jax.__version__} on {jax.devices()[0].device_kind} "
        f"({jax.device_count()} device(s)); {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores"
    )
    mm = matmul_rate()
    print(
        f"JAX float32 matmul 3072^3: {mm:.1f} GFLOP/s"
        + ("" if args.no_torch else f"; PyTorch: {torch_matmul_rate():.1f} GFLOP/s")
    )
    rows = []
    for i, variant in enumerate(args.variants):
        n = args.images[min(i, len(args.images) - 1)]
        heads = args.baseline_heads[min(i, len(args.baseline_heads) - 1)]
        rows.append(compare(variant, n, heads, args, mm))
    mm_after = matmul_rate()
    print(f"\nJAX matmul again after the comparisons: {mm_after:.1f} GFLOP/s")
    if args.scaling_images or args.scaling_heads:
        scaling(args)
    if not args.no_digits:
        digits_section()

    print(
        "\n## Summary (targets: >= 2.5x vs (c), >= 1.7x vs (b), >= 45% of matmul on needed FLOPs)"
    )
    ref = (mm + mm_after) / 2
    for r in rows:
        line = (
            f"{r['variant']}, {r['images']} images: engine {r['a']:.1f} s on "
            f"{r['devices']} device(s), vs (b) {r['b'] / r['a']:.2f}x"
        )
        if "a1" in r:
            line += f", vs itself on one device {r['a1'] / r['a']:.2f}x"
        for kind in ("mean", "resample"):
            if kind in r:
                line += f", {kind} sweep {r[kind] / r['a']:.2f}x zero's"
        if "c" in r:
            line += f", vs (c) {r['c'] / r['a']:.2f}x"
        line += (
            f", needed FLOPs at {100 * r['needed_rate'] / ref:.0f}% of matmul "
            f"(executed {100 * r['executed_rate'] / ref:.0f}%)"
        )
        print(line)
    print(f"total benchmark time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
