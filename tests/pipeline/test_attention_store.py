"""Every image's attention in the bundle by default: codes that decode to the model's attention
within the error the bundle records, written chunk by chunk."""

from __future__ import annotations

import numpy as np
from clitools import TINY

from jaxvit_interp import init_params
from jaxvit_interp.attention_codes import CODE_MAX, decode_attention
from jaxvit_interp.bundle import load_bundle
from jaxvit_interp.model.run import attention_over_images
from jaxvit_interp.patterns.train import AutoencoderSettings
from jaxvit_interp.pipeline.analyze import analyze
from jaxvit_interp.pipeline.settings import AnalysisSettings


def test_default_keeps_every_images_attention_within_the_recorded_error(rng, tmp_path):
    params = init_params(TINY, 3)
    images = rng.normal(0, 1, (9, *TINY.image_size, TINY.channels)).astype(np.float32)
    settings = AnalysisSettings(
        chunk_images=4,  # three chunks, the last one short
        partial_images=2,
        pattern_samples=64,
        clusters=3,
        projection="tsne",  # no UMAP compile for nine images
        autoencoder=AutoencoderSettings(max_epochs=2, batch_size=16, latent_dim=4, features=(8,)),
        set_images=0,
    )
    assert settings.attention_images == "all"
    analyze(TINY, params, images, tmp_path / "run", settings=settings, progress=False)
    attention = load_bundle(tmp_path / "run")["attention"]
    np.testing.assert_array_equal(attention["image_index"], np.arange(9))

    # The reference: the model's attention on each image alone.
    want = np.concatenate(
        [attention_over_images(TINY, params, images[i : i + 1]) for i in range(9)]
    ).astype(np.float32)
    got = decode_attention(np.asarray(attention["codes"]), np.asarray(attention["steps"]))
    # Within each matrix's recorded error, give or take a float16 unit: the analysis's
    # batches of images may round the model's float16 attention differently.
    ulp = np.spacing(want.astype(np.float16)).astype(np.float32)
    assert (np.abs(got - want) <= attention["error"][..., None, None] + ulp).all()
    assert (attention["error"] <= 0.5 / CODE_MAX + 1e-7).all()
    np.testing.assert_array_equal(attention["error_max"], attention["error"].max(axis=0))
