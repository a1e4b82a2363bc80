"""Input-level explanations: maps over the patch grid ``[image, Gh, Gw]`` and their faithfulness.

- :func:`attention_flow`: Abnar & Zuidema's max-flow through the layers' attention (:mod:`.flow`).
- :func:`faithfulness`: deletion and insertion curves of any maps, against a random patch order
  (:mod:`.faithfulness`).
- :func:`head_attention_maps`, :func:`head_faithfulness`: every head's attention as a map, and
  how faithful each one is (:mod:`.heads`).
"""

from jaxvit_interp.explain.faithfulness import Faithfulness, faithfulness
from jaxvit_interp.explain.flow import attention_flow
from jaxvit_interp.explain.heads import HeadFaithfulness, head_attention_maps, head_faithfulness

__all__ = [
    "Faithfulness",
    "HeadFaithfulness",
    "attention_flow",
    "faithfulness",
    "head_attention_maps",
    "head_faithfulness",
]
