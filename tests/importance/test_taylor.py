"""``taylor`` against finite differences and against a per-image gradient through run_model."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxvit_interp.execution import Execution
from jaxvit_interp.importance import head_importance, taylor_importance
from jaxvit_interp.model import VisionTransformer, run_model

CONFIG = dict(
    image_size=(8, 8),
    patch_size=(4, 4),
    hidden_size=18,
    num_layers=2,
    num_heads=3,
    mlp_dim=24,
    num_classes=6,
    representation_size=5,
)


def _loss(config, params, image, label, head_mask):
    logits = run_model(config, params, image[None], head_mask=head_mask).logits[0]
    return -jax.nn.log_softmax(logits)[label]


def test_taylor_matches_finite_differences(random_model, random_images):
    config, params = random_model(11, **CONFIG)
    images = random_images(config, 3, 11)
    labels = np.array([0, 4, 5])
    result = head_importance(
        config, params, images, labels, metrics=("taylor",), execution=Execution(progress=False)
    )
    assert result.metrics == ("taylor",) and result.prob is None
    eps = 1e-2
    L, H = config.num_layers, config.num_heads
    for b in range(len(images)):
        for layer in range(L):
            for head in range(H):
                up = np.ones((L, H), np.float32)
                down = np.ones((L, H), np.float32)
                up[layer, head] += eps
                down[layer, head] -= eps
                fd = (
                    float(_loss(config, params, images[b], labels[b], up))
                    - float(_loss(config, params, images[b], labels[b], down))
                ) / (2 * eps)
                # The loss is smooth in the gate; central differences err by O(eps^2) plus
                # float32 rounding of the losses divided by 2 eps.
                np.testing.assert_allclose(
                    result.taylor[b, layer, head], abs(fd), rtol=2e-2, atol=2e-4
                )


def test_taylor_matches_single_image_gradient(random_model, random_images):
    """One backward pass for the batch equals a gradient per image w.r.t. the shared head mask."""
    config, params = random_model(12, **{**CONFIG, "classifier": "gap"})
    images = random_images(config, 4, 12)
    model = VisionTransformer(config)

    def loss(mask, image, label):
        logits = model.apply({"params": params}, image[None], head_mask=mask).logits[0]
        return -jax.nn.log_softmax(logits)[label]

    logits = run_model(config, params, images).logits
    predicted = np.asarray(jnp.argmax(logits, -1))
    ones = jnp.ones((config.num_layers, config.num_heads))
    grad = jax.jit(jax.grad(loss))
    expected = np.stack([np.abs(np.asarray(grad(ones, images[b], predicted[b]))) for b in range(4)])
    taylor, out, targets = jax.jit(taylor_importance, static_argnums=0)(
        config, params, jnp.asarray(images)
    )
    np.testing.assert_array_equal(np.asarray(targets), predicted)
    np.testing.assert_allclose(np.asarray(taylor), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out.logits), np.asarray(logits), rtol=1e-5, atol=1e-5)
