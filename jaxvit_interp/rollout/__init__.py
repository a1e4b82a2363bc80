"""Attention across layers: attention rollout (Abnar & Zuidema 2020) per image.

- :func:`attention_rollout`, :func:`read_rows`, :func:`rollout_maps` and
  :func:`layer_contributions`: the pure kernels (:mod:`.kernels`).
- :func:`model_rollout_over_images`: the model run over many images batch by batch, keeping for
  each image the rollout map of the token the classifier reads after every layer
  ``[image, layer, Gh, Gw]`` (its last layer is the usual rollout map; the earlier ones show
  how each layer adds to it).
- :func:`final_rollout_over_images`: what the analysis keeps of it: the map after the last
  layer ``[image, Gh, Gw]`` and each layer's contribution ``[image, layer]``
  (:class:`FinalRollout`).
"""

from jaxvit_interp.rollout.kernels import (
    RESIDUAL_WEIGHT,
    attention_rollout,
    layer_contributions,
    read_rows,
    rollout_maps,
)
from jaxvit_interp.rollout.measure import (
    FinalRollout,
    final_rollout_over_images,
    model_rollout_over_images,
)

__all__ = [
    "RESIDUAL_WEIGHT",
    "FinalRollout",
    "attention_rollout",
    "final_rollout_over_images",
    "layer_contributions",
    "model_rollout_over_images",
    "read_rows",
    "rollout_maps",
]
