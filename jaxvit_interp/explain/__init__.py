"""Input-level explanations: which patches of an image its label rests on, and how faithful
each picture of it is.

- :func:`explain`: maps ``[image, Gh, Gw]`` of each method (:data:`METHODS`): attention
  ``rollout``, ``attention_flow``, Chefer et al.'s ``grad_rollout``, ``gradcam``,
  ``integrated_gradients``, ``occlusion`` and each head's own attention ``head:L.H``, as an
  :class:`Explanation` (:mod:`.maps`).
- :func:`attention_flow`: Abnar & Zuidema's max-flow through the layers' attention (:mod:`.flow`).
- :func:`faithfulness`: deletion and insertion curves of any maps, against a random patch order
  (:mod:`.faithfulness`).
- :func:`head_attention_maps`, :func:`head_faithfulness`: every head's attention as a map, and
  how faithful each one is (:mod:`.heads`).
- The batch kernels: :mod:`.gradients` (the gradient methods), :mod:`.occlusion` and the
  baseline images integrated gradients, occlusion and the curves start from (:mod:`.baselines`).
"""

from jaxvit_interp.explain.baselines import BASELINE_KINDS, baseline_images
from jaxvit_interp.explain.faithfulness import Faithfulness, faithfulness
from jaxvit_interp.explain.flow import attention_flow
from jaxvit_interp.explain.gradients import (
    grad_rollout_batch,
    gradcam_batch,
    integrated_gradients_batch,
    relevance_rollout,
)
from jaxvit_interp.explain.heads import HeadFaithfulness, head_attention_maps, head_faithfulness
from jaxvit_interp.explain.maps import DEFAULT_METHODS, METHODS, Explanation, explain
from jaxvit_interp.explain.occlusion import occlusion_batch

__all__ = [
    "BASELINE_KINDS",
    "DEFAULT_METHODS",
    "METHODS",
    "Explanation",
    "Faithfulness",
    "HeadFaithfulness",
    "attention_flow",
    "baseline_images",
    "explain",
    "faithfulness",
    "grad_rollout_batch",
    "gradcam_batch",
    "head_attention_maps",
    "head_faithfulness",
    "integrated_gradients_batch",
    "occlusion_batch",
    "relevance_rollout",
]
