"""Head attention maps against the read row of a plain forward pass's attention, and head
faithfulness against the faithfulness of each head's map alone."""

import numpy as np
import pytest
from families import CASES, SMALL  # noqa: I001  (tests/model is on sys.path via conftest)

from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution
from jaxvit_interp.explain.faithfulness import faithfulness
from jaxvit_interp.explain.heads import head_attention_maps, head_faithfulness
from jaxvit_interp.model import run_model

QUIET = Execution(progress=False, batch_size=2)


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_head_maps_read_the_cls_row_or_the_mean_of_the_patch_rows(
    rng, small_classifier, classifier
):
    config, params = small_classifier(num_classes=4, classifier=classifier, num_register_tokens=1)
    images = rng.normal(size=(3, *config.image_size, 3)).astype(np.float32)
    got = head_attention_maps(config, params, images, QUIET)
    attention = np.asarray(run_model(config, params, images).attention, np.float64)
    first = config.num_prefix_tokens
    if config.has_cls_token:
        rows = attention[..., 0, first:]
    else:
        rows = attention[..., first:, first:].mean(axis=-2)
    want = rows.reshape(3, config.num_layers, config.num_heads, *config.grid)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_head_faithfulness_is_each_head_maps_faithfulness(rng, small_classifier):
    config, params = small_classifier(num_classes=4)
    images = rng.normal(size=(3, *config.image_size, 3)).astype(np.float32)
    labels = rng.integers(0, config.num_classes, 3)
    got = head_faithfulness(
        config, params, images, labels, mode="insertion", steps=3, baseline="mean", execution=QUIET
    )
    maps = head_attention_maps(config, params, images, QUIET)
    for layer, head in [(0, 0), (config.num_layers - 1, config.num_heads - 1)]:
        alone = faithfulness(
            config,
            params,
            images,
            labels,
            maps[:, layer, head],
            mode="insertion",
            steps=3,
            baseline="mean",
            execution=QUIET,
        )
        np.testing.assert_allclose(got.curves[:, layer, head], alone.curves, rtol=1e-5)
        np.testing.assert_allclose(got.random_curves, alone.random_curves, rtol=1e-5)
    np.testing.assert_allclose(got.mean, got.area.mean(axis=0), rtol=1e-6)
    assert got.area.shape == (3, config.num_layers, config.num_heads)


@pytest.mark.parametrize("family", sorted(CASES))
def test_every_family(rng, random_model, family):
    config, params = random_model(**SMALL, **CASES[family])
    images = rng.normal(size=(2, *config.image_size, config.channels)).astype(np.float32)
    maps = head_attention_maps(config, params, images, QUIET)
    assert maps.shape == (2, config.num_layers, config.num_heads, *config.grid)
    assert np.isfinite(maps).all() and (maps >= 0).all()
    if not config.num_classes:
        with pytest.raises(InputError, match=r"num_classes=0.*jaxvit_interp\.model\.probe"):
            head_faithfulness(config, params, images, None, execution=QUIET)
        return
    result = head_faithfulness(config, params, images, None, steps=2, execution=QUIET)
    assert result.area.shape == (2, config.num_layers, config.num_heads)
    assert np.isfinite(result.area).all() and np.isfinite(result.random_area).all()
