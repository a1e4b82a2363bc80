"""Attention across layers: attention rollout (Abnar & Zuidema 2020) per image.

- :func:`attention_rollout` and :func:`rollout_maps`: the pure kernels (:mod:`.kernels`).
- :func:`model_rollout_over_images`: the model run over many images batch by batch, keeping for
  each image the rollout map of the token the classifier reads after every layer
  ``[image, layer, Gh, Gw]`` (its last layer is the usual rollout map; the earlier ones show
  how each layer adds to it).
"""

from jaxvit_interp.rollout.kernels import RESIDUAL_WEIGHT, attention_rollout, rollout_maps
from jaxvit_interp.rollout.measure import model_rollout_over_images

__all__ = [
    "RESIDUAL_WEIGHT",
    "attention_rollout",
    "model_rollout_over_images",
    "rollout_maps",
]
