"""How fast every single-head ablation runs here: the engine against a plain jitted loop.

:func:`run_benchmark` times, in one process and on the same random images, (a) the batched
engine (:func:`~jaxvit_interp.importance.head_importance`, every metric of
:data:`~jaxvit_interp.quantities.PRUNING_METRICS`: all but ``taylor``) and (b) the loop people
write today: one jitted forward pass per pruned head with a head mask. It reports heads x
images per second, the floating-point operations each executed, the achieved TFLOP/s and, for
devices whose vendor peak is listed in :data:`PEAK_TFLOPS`, its share of that peak. With
``precision`` other than ``"highest"`` the engine also runs at ``"highest"`` and the largest
difference of its scores is recorded.

FLOP counts (multiply-add = 2 FLOPs, per image): "needed" is one full pass plus, for each head
of layer ``l``, layers ``l..L-1`` and the classifier (what an ablation must recompute when lower
layers are reused); "executed" is what the engine runs (it also skips the attention of the pruned
layer, folds the pruned head into that layer's first MLP product and, in the last layer with a
CLS token, computes the CLS row only).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution, as_execution
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.quantities import PRUNING_METRICS

__all__ = [
    "PEAK_TFLOPS",
    "PRECISIONS",
    "executed_flops",
    "full_flops",
    "last_layer_flops",
    "needed_flops",
    "run_benchmark",
]

# --precision -> jax_default_matmul_precision: "default" lets GPUs and TPUs round matrix-product
# inputs to TF32 or bfloat16 passes; CPUs compute float32 whatever is asked.
PRECISIONS = {"highest": "highest", "default": "default", "bfloat16": "bfloat16"}
# Dense vendor peak TFLOP/s by device kind (as JAX names it) and precision; devices not listed
# get no share of peak.
PEAK_TFLOPS = {
    "NVIDIA A100-SXM4-40GB": {"highest": 19.5, "default": 156.0, "bfloat16": 312.0},
    "NVIDIA A100-SXM4-80GB": {"highest": 19.5, "default": 156.0, "bfloat16": 312.0},
    "NVIDIA H100 80GB HBM3": {"highest": 67.0, "default": 494.7, "bfloat16": 989.4},
    "NVIDIA H200": {"highest": 67.0, "default": 494.7, "bfloat16": 989.4},
    "TPU v4": {"default": 275.0, "bfloat16": 275.0},
    "TPU v5 lite": {"default": 197.0, "bfloat16": 197.0},
    "TPU v5": {"default": 459.0, "bfloat16": 459.0},
}


def layer_flops(c: ViTConfig) -> int:
    n, d, f = c.num_tokens, c.hidden_size, c.mlp_dim
    return 2 * n * d * 3 * d + 2 * 2 * n * n * d + 2 * n * d * d + 2 * 2 * n * d * f


def readout_flops(c: ViTConfig) -> int:
    d, r = c.hidden_size, c.representation_size
    return 2 * d * r + 2 * r * c.num_classes if r else 2 * d * c.num_classes


def last_layer_flops(c: ViTConfig) -> int:
    """The last block as the engines run it: for the CLS query alone with a token classifier
    (q, key directions, scores, pooled tokens, values, output projection, MLP), else whole."""
    n, d, f, H = c.num_tokens, c.hidden_size, c.mlp_dim, c.num_heads
    if not c.has_cls_token:
        return layer_flops(c)
    return 2 * d * d + 2 * d * d + 2 * 2 * n * d * H + 2 * d * d + 2 * d * d + 2 * 2 * d * f


def full_flops(c: ViTConfig) -> int:
    """One forward pass of one image."""
    embed = 2 * c.num_patches * (c.patch_size[0] * c.patch_size[1] * c.channels) * c.hidden_size
    return embed + c.num_layers * layer_flops(c) + readout_flops(c)


def needed_flops(c: ViTConfig) -> int:
    """One full pass plus layers l..L-1 and the readout for every head of every layer l."""
    L, H = c.num_layers, c.num_heads
    per_layer = [H * ((L - layer) * layer_flops(c) + readout_flops(c)) for layer in range(L)]
    return full_flops(c) + sum(per_layer)


def executed_flops(c: ViTConfig) -> int:
    """What the engine runs per image (see ``jaxvit_interp/importance/engine.py``).

    The full pass; then for each spawn layer ``l`` the value projection once and, per head, its
    mixed values and delta; the pruned layer's MLP with the first product folded through the
    head's delta (``head_dim`` wide) plus that product of the unpruned stream once per layer;
    layers ``l+1..L-2`` whole; and the last layer for the CLS query only, with keys and values
    reassociated so that no token but CLS is projected (token classifier).
    """
    n, d, f, dh = c.num_tokens, c.hidden_size, c.mlp_dim, c.head_dim
    L, H = c.num_layers, c.num_heads
    mlp = 2 * 2 * n * d * f
    delta = 2 * n * n * dh + 2 * n * dh * d
    last = last_layer_flops(c)
    last_mlp = 2 * 2 * d * f if c.has_cls_token else mlp
    total = full_flops(c)
    for layer in range(L):
        if layer == L - 1 and c.has_cls_token:
            own, shared = last_mlp, 0
        else:
            own, shared = 2 * n * dh * f + 2 * n * f * d, 2 * n * d * f
        above = sum(last if j == L - 1 else layer_flops(c) for j in range(layer + 1, L))
        total += 2 * n * d * d + shared + H * (delta + own + above + readout_flops(c))
    return total


def fold_flops(c: ViTConfig) -> int:
    """The engine's once-per-run folding of output projections into the MLP (all layers)."""
    return 2 * c.num_layers * c.hidden_size * c.hidden_size * c.mlp_dim


def sample_heads(c: ViTConfig, count: int | None) -> list[tuple[int, int]]:
    """``count`` heads spread over every layer (all heads when None)."""
    heads = [(layer, h) for layer in range(c.num_layers) for h in range(c.num_heads)]
    if count is None or count >= len(heads):
        return heads
    idx = np.linspace(0, len(heads) - 1, count).round().astype(int)
    return [heads[i] for i in idx]


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def prepare_engine(c, params, images, execution: Execution):
    """Compile the engine's programs; returns ``(first, run)``.

    ``first``: seconds of the first call on one device batch (compilation included); ``run()``:
    ``(seconds, scores)`` for every single-head ablation of every image, programs compiled.
    ``execution``: the devices and the memory budget the batches are planned for.
    """
    from jaxvit_interp.importance import head_importance
    from jaxvit_interp.importance.engine import head_importance_plan

    plan = head_importance_plan(c, params, execution, num_images=len(images))

    def call(x):
        return head_importance(c, params, x, metrics=PRUNING_METRICS, execution=execution)

    first = timed(lambda: call(images[: plan.images_per_batch]))

    def run():
        held = []
        seconds = timed(lambda: held.append(call(images)))
        return seconds, held[0]

    return first, run


def prepare_jax_loop(c, params, images, heads):
    """A jitted forward pass with one head masked, compiled; returns ``run()``: seconds per head
    over ``heads``, each head's KL divergence and representation change fetched to the host."""
    from jaxvit_interp.model import VisionTransformer

    model = VisionTransformer(c)

    @jax.jit
    def forward(params, images, mask, layer):
        out = model.apply({"params": params}, images, head_mask=mask)
        return out.logits, out.pre_logits, jnp.take(out.block_outputs, layer, axis=1)

    x = jnp.asarray(images)
    ones = np.ones((c.num_layers, c.num_heads), np.float32)
    base_logits, base_z, _ = jax.device_get(forward(params, x, ones, 0))
    p = jax.nn.softmax(base_logits)

    def one(layer, head):
        mask = ones.copy()
        mask[layer, head] = 0
        logits, z, block = jax.device_get(forward(params, x, mask, layer))
        q = jax.nn.softmax(logits)
        return float(np.sum(p * (np.log(p) - np.log(q)))) + float(np.sum(z * base_z))

    one(*heads[0])  # compile

    def run():
        t = time.perf_counter()
        for lh in heads:
            one(*lh)
        return (time.perf_counter() - t) / len(heads)

    return run


def run_benchmark(
    variant: str = "B/16",
    num_images: int = 8,
    *,
    image_size: int | None = None,
    precision: str = "highest",
    rounds: int = 2,
    loop_heads: int | None = 12,
    seed: int = 0,
    execution: Execution | None = None,
) -> dict:
    """Time the engine and the plain loop on ``num_images`` random images of a random ``variant``.

    Args:
      variant: a model variant name (``ViTConfig.from_variant``), random weights.
      num_images: images (random pixels in [-1, 1]).
      image_size: square image side in pixels (None: the variant's).
      precision: a key of :data:`PRECISIONS`.
      rounds: timed rounds of each after compiling; the best is reported.
      loop_heads: heads the loop is timed on, spread over the layers and scaled to all heads
        (None: every head); it runs a full pass per head, so every head is rarely worth it.
      seed: of the weights and the images.
      execution: the engine's devices, memory budget and batch size; None: every device JAX
        sees, the default budget. Its progress is not reported (it would be timed).

    Returns:
      A JSON-able record: the device, the model, each side's seconds, rates and FLOPs, and with a
      precision other than ``highest`` the largest difference of the engine's scores from them.
    """
    from jaxvit_interp.model import init_params
    from jaxvit_interp.parallel import all_devices_mesh

    if precision not in PRECISIONS:
        raise InputError(
            f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}"
        )
    if num_images < 1 or rounds < 1:
        raise InputError(f"images and rounds must be at least 1, got {num_images} and {rounds}")
    c = ViTConfig.from_variant(
        variant, **({} if image_size is None else {"image_size": image_size})
    )
    params = init_params(c, seed)
    images = (
        np.random.default_rng(seed)
        .uniform(-1, 1, (num_images, *c.image_size, c.channels))
        .astype(np.float32)
    )
    heads_total = c.num_layers * c.num_heads
    sample = sample_heads(c, loop_heads)
    if execution is None:
        execution = Execution(mesh=all_devices_mesh())
    execution = as_execution(execution).with_progress(False)
    with jax.default_matmul_precision(PRECISIONS[precision]):
        first, run_engine = prepare_engine(c, params, images, execution)
        run_loop = prepare_jax_loop(c, params, images, sample)
        engine_times, loop_times, scores = [], [], None
        # Interleaved rounds expose both to the same load on a shared machine.
        for _ in range(rounds):
            seconds, scores = run_engine()
            engine_times.append(seconds)
            loop_times.append(run_loop() * heads_total)
    engine_s, loop_s = min(engine_times), min(loop_times)
    executed = executed_flops(c) * num_images + fold_flops(c)
    loop_flops = heads_total * full_flops(c) * num_images
    device = jax.devices()[0]
    peak = PEAK_TFLOPS.get(device.device_kind, {}).get(precision)

    def side(seconds, flops, times):
        rate = flops / seconds / 1e12
        return {
            "seconds": seconds,
            "rounds": times,
            "heads_x_images_per_s": heads_total * num_images / seconds,
            "executed_tflop": flops / 1e12,
            "tflop_per_s": rate,
            "share_of_peak": None if peak is None else rate / (peak * jax.device_count()),
        }

    record = {
        "variant": variant,
        "images": num_images,
        "image_size": c.image_size[0],
        "heads": heads_total,
        "precision": precision,
        "device": {
            "platform": jax.default_backend(),
            "kind": device.device_kind,
            "count": jax.device_count(),
            "processes": jax.process_count(),
            "peak_tflop_per_s": peak,
        },
        "engine": {
            **side(engine_s, executed, engine_times),
            "first_call_seconds": first,
            "needed_tflop": needed_flops(c) * num_images / 1e12,
        },
        "loop": {**side(loop_s, loop_flops, loop_times), "timed_heads": len(sample)},
        "speedup": loop_s / engine_s,
    }
    if precision != "highest":
        with jax.default_matmul_precision("highest"):
            _, reference = prepare_engine(c, params, images, execution)[1]()
        record["error_vs_highest"] = {
            m: float(
                np.max(
                    np.abs(np.asarray(scores[m], np.float64) - np.asarray(reference[m], np.float64))
                )
            )
            for m in PRUNING_METRICS
        }
    return record
