"""Streaming patterns out of a model equals extracting them from its full attention."""

import numpy as np
import pytest

from jaxvit_interp.execution import Execution
from jaxvit_interp.model import ViTConfig, init_params, run_model
from jaxvit_interp.patterns import collect_patterns, extract_patterns


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_collect_matches_one_pass(classifier):
    config = ViTConfig.from_variant(
        "mu/4", image_size=(12, 16), num_classes=3, classifier=classifier
    )
    params = init_params(config, 0)
    images = np.random.default_rng(0).standard_normal((7, 12, 16, 3)).astype(np.float32)
    got = collect_patterns(
        config, params, images, execution=Execution(batch_size=3, progress=False)
    )
    assert set(got) == ({"cls", "patch"} if classifier == "token" else {"patch"})
    attention = run_model(config, params, images).attention
    for kind, patterns in got.items():
        assert patterns.shape[:3] == (7, config.num_layers, config.num_heads)
        want = extract_patterns(attention, config.grid, config.has_cls_token, kind)
        np.testing.assert_allclose(patterns, want, rtol=1e-5, atol=1e-7)
    if classifier == "gap":
        with pytest.raises(ValueError, match="no CLS token"):
            collect_patterns(
                config, params, images, kinds=("cls",), execution=Execution(progress=False)
            )
