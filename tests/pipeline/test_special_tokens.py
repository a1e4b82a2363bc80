"""The analysis pipeline and the site on models with special tokens besides CLS.

The distillation and register tokens come between CLS and the patches: hop strength and the
patterns must start the patch grid after them, and the bundle and the site must count them.
"""

import numpy as np

from jaxvit_interp.bundle import ResultsBundle
from jaxvit_interp.execution import Execution
from jaxvit_interp.model import ViTConfig, init_params, run_model
from jaxvit_interp.patterns import collect_patterns
from jaxvit_interp.strength import model_strength_over_images
from jaxvit_interp.strength.reference import hop_strength_loop

CONFIG = ViTConfig(image_size=(8, 12), patch_size=4, hidden_size=16, num_layers=2, num_heads=2,
                   mlp_dim=24, num_classes=3, distillation_token=True, num_register_tokens=2,
                   position_prefix_tokens=2)  # fmt: skip


def test_strength_and_patterns_start_the_grid_after_every_special_token():
    params = init_params(CONFIG, 0)
    images = np.random.default_rng(0).normal(size=(3, 8, 12, 3)).astype(np.float32)
    strength = model_strength_over_images(
        CONFIG, params, images, execution=Execution(batch_size=2, progress=False)
    )
    patterns = collect_patterns(
        CONFIG, params, images, execution=Execution(batch_size=2, progress=False)
    )
    attention = np.asarray(run_model(CONFIG, params, images).attention, np.float64)
    assert attention.shape[-1] == 4 + 2 * 3
    for i in range(3):
        for layer in range(2):
            for head in range(2):
                want = hop_strength_loop(
                    attention[i, layer, head], CONFIG.grid, num_prefix_tokens=4
                )
                got = {
                    k: np.asarray(getattr(strength.local, k))[i, layer, head]
                    for k in ("strength", "patch_to_cls", "cls_to_patch")
                }
                got["cls_pattern"] = patterns["cls"][i, layer, head]
                np.testing.assert_allclose(got["strength"], want["strength"], rtol=1e-4, atol=1e-6)
                np.testing.assert_allclose(got["patch_to_cls"], want["patch_to_cls"], rtol=1e-4)
                np.testing.assert_allclose(got["cls_to_patch"], want["cls_to_patch"], rtol=1e-4)
                # The CLS pattern is CLS's attention over the patches alone.
                cls_row = attention[i, layer, head, 0, 4:].reshape(CONFIG.grid)
                np.testing.assert_allclose(got["cls_pattern"], cls_row, rtol=1e-4, atol=1e-7)


def test_bundle_and_site_count_the_special_tokens():
    from jaxvit_interp.bundle import special_tokens

    config = CONFIG.to_dict()
    assert special_tokens(config) == (True, 4)
    assert special_tokens(
        CONFIG.replace(
            classifier="map", num_register_tokens=0, position_prefix_tokens=None
        ).to_dict()
    ) == (
        False,
        1,
    )
    # A config written before the special-token fields: CLS alone, as the classifier says.
    old = {k: v for k, v in config.items() if k not in ("class_token", "distillation_token",
                                                        "num_register_tokens")}  # fmt: skip
    assert special_tokens(old) == (True, 1)
    bundle = ResultsBundle(
        meta={"config": config, "image_ids": ["a"], "class_names": ["x", "y", "z"],
              "pruning_modes": ["none"]},
        parts={},
    )  # fmt: skip
    assert bundle.dims()["N"] == 4 + 6
