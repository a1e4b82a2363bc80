"""The batch of the attention pass of ``analyze``, sized from the memory budget."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvit_interp import AnalysisSettings, ViTConfig, init_params
from jaxvit_interp.attention_pass import _pass_batch
from jaxvit_interp.pipeline.analyses import PASS_ANALYSES
from jaxvit_interp.pipeline.passes import DEFAULT_PASS_IMAGES, attention_pass_bytes, pass_images

B16 = ViTConfig.from_variant("B/16", num_classes=1000)
# ViT-B/16: 12 layers x 12 heads of 197 x 197 float32 attention, four times.
B16_IMAGE = 4 * 4 * 12 * 12 * 197 * 197
GIB = 1 << 30


def test_attention_pass_bytes_of_vit_b16():
    assert attention_pass_bytes(B16) == B16_IMAGE == 89_415_936


@pytest.mark.parametrize(
    ("num_images", "budget", "fixed", "devices", "expected"),
    [
        # 0.9 GiB less 300 MB holds 7 images of 89.4 MB.
        (100, GIB, 300_000_000, 1, (int(0.9 * GIB) - 300_000_000) // B16_IMAGE),
        (100, 64 * GIB, 0, 1, DEFAULT_PASS_IMAGES),  # the cap
        (5, 64 * GIB, 0, 1, 5),  # never more than the chunk: no padded images
        (100, GIB, GIB, 1, 1),  # the parameters fill the budget: still one image
        (100, GIB, 300_000_000, 2, 14),  # per device, times the devices
        (100, GIB, 300_000_000, 4, 28),
        (100, GIB, 300_000_000, 8, DEFAULT_PASS_IMAGES),
        (5, 64 * GIB, 0, 4, 8),  # rounded up to whole devices
    ],
)
def test_pass_images_rule(num_images, budget, fixed, devices, expected):
    got = pass_images(
        B16,
        num_images=num_images,
        memory_budget_bytes=budget,
        fixed_bytes=fixed,
        num_devices=devices,
    )
    assert got == expected
    assert got % devices == 0


def test_estimate_covers_xla_memory_analysis():
    """What XLA allocates per image for the chunk's attention pass with every analysis's
    reducer, the kept attention of every image among them (the slope between two batch sizes,
    so the parameters and constant buffers drop out), stays within the estimate, and the
    estimate is not loose by more than half, for a model whose attention dominates."""
    config = ViTConfig.from_variant(
        "mu/2", image_size=(32, 32), num_layers=2, num_heads=4, num_classes=3
    )
    params = jax.eval_shape(lambda: init_params(config, 0))

    def allocated(batch):
        keep = np.arange(batch)
        reducers = tuple(
            reducer
            for analysis in PASS_ANALYSES
            if (reducer := analysis.reducer(config, AnalysisSettings(), keep)) is not None
        )
        assert len(reducers) == len(PASS_ANALYSES)
        images = jax.ShapeDtypeStruct((batch, *config.image_size, config.channels), jnp.float32)
        program = jax.jit(lambda p, x: _pass_batch(config, p, x, reducers))
        memory = program.lower(params, images).compile().memory_analysis()
        return memory.temp_size_in_bytes + memory.output_size_in_bytes

    per_image = (allocated(4) - allocated(2)) / 2
    assert 0.5 * attention_pass_bytes(config) <= per_image <= attention_pass_bytes(config)
