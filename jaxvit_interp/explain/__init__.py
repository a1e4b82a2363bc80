"""Input-level explanations: which patches of an image its label rests on.

- :func:`explain`: maps ``[image, Gh, Gw]`` of each method (:data:`METHODS`): attention
  ``rollout``, Chefer et al.'s ``grad_rollout``, ``gradcam``, ``integrated_gradients`` and
  ``occlusion``, as an :class:`Explanation` (:mod:`.maps`).
- The batch kernels: :mod:`.gradients` (the gradient methods), :mod:`.occlusion` and the
  baseline images integrated gradients and occlusion start from (:mod:`.baselines`).
"""

from jaxvit_interp.explain.baselines import BASELINE_KINDS, baseline_images
from jaxvit_interp.explain.gradients import (
    grad_rollout_batch,
    gradcam_batch,
    integrated_gradients_batch,
    relevance_rollout,
)
from jaxvit_interp.explain.maps import DEFAULT_METHODS, METHODS, Explanation, explain
from jaxvit_interp.explain.occlusion import occlusion_batch

__all__ = [
    "BASELINE_KINDS",
    "DEFAULT_METHODS",
    "METHODS",
    "Explanation",
    "baseline_images",
    "explain",
    "grad_rollout_batch",
    "gradcam_batch",
    "integrated_gradients_batch",
    "occlusion_batch",
    "relevance_rollout",
]
