"""How many images one forward pass of the attention-reading stages takes.

The chunk's attention pass (:mod:`jaxvit_interp.attention_pass`) runs the model over a chunk's
images a batch at a time, and every layer's attention of a batch is live inside one compiled
program with every reducer's working arrays: ViT-B/16 holds 61 MiB an image there, so a fixed
batch of 32 images would take 1.9 GiB on top of the rest of the process. The batch is therefore sized from the same per-device memory budget as
the ablation engine, and never larger than the chunk (a padded image is work and memory for
nothing).
"""

from __future__ import annotations

from jaxvit_interp.model.config import ViTConfig

# The most images per pass when the budget allows more: enough to keep an accelerator busy.
DEFAULT_PASS_IMAGES = 32
_F32 = 4


def attention_pass_bytes(config: ViTConfig) -> int:
    """Estimated live bytes per image of the attention pass with every analysis's reducer.

    Four arrays of the ``[layer, head, N, N]`` float32 attention of every layer: the attention
    itself and what XLA keeps beside it (a softmax's scores, rollout's products, the patterns'
    and the kept attention's copies); calibrated against XLA's memory analysis of the whole pass,
    kept attention included: 2.8 such arrays an image for ViT-B/16 (61 MiB), 3.3 for a
    257-token model of 2 layers.
    """
    n = config.num_tokens
    return 4 * _F32 * config.num_layers * config.num_heads * n * n


def pass_images(
    config: ViTConfig,
    *,
    num_images: int,
    memory_budget_bytes: int,
    fixed_bytes: int = 0,
    num_devices: int = 1,
    most: int = DEFAULT_PASS_IMAGES,
) -> int:
    """Images per forward pass over ``num_devices`` devices.

    As many as fit each device's ``memory_budget_bytes`` once ``fixed_bytes`` (the parameters
    every device holds) and a tenth held back for XLA's own buffers are taken off (the ablation
    engine's rule, :func:`~jaxvit_interp.importance.engine.plan_batches`), at least one per
    device, at most ``most`` and at most ``num_images`` rounded up to whole devices.
    """
    budget = int(0.9 * memory_budget_bytes) - fixed_bytes
    per_device = max(1, budget // attention_pass_bytes(config))
    images = min(per_device * num_devices, most, num_images)
    return max(num_devices, -(-images // num_devices) * num_devices)
