"""The analyses that read a chunk's attention pass, declared once: what ``analyze`` runs per chunk
of images besides the ablations, what a chunk file keeps of each, and what the bundle makes of it.

Each :class:`PassAnalysis` names

- its *reducer* (:mod:`jaxvit_interp.attention_pass`), built for the model, the settings and the
  chunk (None where the analysis does not apply: special-token mass without special tokens, the
  kept attention of a chunk none of whose images keep theirs);
- its *chunk arrays*: the reducer's outputs as a chunk file keeps them (keys of
  :data:`jaxvit_interp.quantities.CHUNK_KEYS`);
- a *marker*, the chunk key that shows a chunk holds the analysis: a chunk written before the
  analysis existed (a resumed older run) lacks it, and gets it computed when it is read;
- its *part*: the bundle arrays it makes from the chunks' arrays merged over every image, or
  None where another stage makes them (patterns: the pattern stage; the kept attention: copied
  into the bundle's own files).

Adding an analysis that reads attention: its reducer and part function in its own package, an
entry here, its arrays in :data:`jaxvit_interp.quantities.SCHEMA` and ``CHUNK_KEYS``, and its view.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from jaxvit_interp.attention_pass import Reducer
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.quantities import CHUNK_KEYS, STRENGTH_FIELDS

__all__ = ["PASS_ANALYSES", "PassAnalysis", "pattern_kinds"]


@dataclasses.dataclass(frozen=True)
class PassAnalysis:
    """One analysis of the chunk's attention pass (see the module docstring).

    Attributes:
      name: its name, its reducer's, and its entry of :data:`~jaxvit_interp.quantities.CHUNK_KEYS`.
      reducer: ``(config, settings, keep) -> Reducer | None``; ``keep`` the chunk's images (by
        index in the chunk) whose attention is kept.
      chunk_arrays: the reducer's outputs (one chunk's images) -> chunk-file arrays.
      marker: a chunk key that every chunk holding this analysis has; None for an analysis
        that every chunk format holds.
      bundle: ``(config, merged) -> {array: value}`` for the part, from the chunks' arrays merged
        over every image; None where another stage builds them.
      part: the bundle part those arrays go into (default: ``name``).
    """

    name: str
    reducer: Callable[[ViTConfig, object, np.ndarray], Reducer | None]
    chunk_arrays: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    marker: str | None
    bundle: Callable[[ViTConfig, dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None
    part: str = ""

    def __post_init__(self):
        if not self.part:
            object.__setattr__(self, "part", self.name)
        if self.marker is not None and self.marker not in CHUNK_KEYS[self.name].values():
            raise ValueError(f"{self.name}: marker {self.marker!r} is none of its chunk keys")


def pattern_kinds(config: ViTConfig, settings) -> tuple[str, ...]:
    """The pattern kinds a run collects: the settings' kinds the model has (CLS needs a CLS
    token)."""
    return tuple(k for k in settings.pattern_kinds if k != "cls" or config.has_cls_token)


def _renamed(name: str, outputs: dict[str, np.ndarray], dtype=None) -> dict[str, np.ndarray]:
    """Analysis ``name``'s reducer outputs under their chunk keys (:data:`CHUNK_KEYS`), as
    ``dtype`` where given."""
    keys = CHUNK_KEYS[name]
    return {
        keys[name]: (value if dtype is None else np.asarray(value, dtype))
        for name, value in outputs.items()
        if name in keys
    }


def _strength_reducer(config, settings, keep):
    from jaxvit_interp.strength.aggregate import HopStrengthReducer

    return HopStrengthReducer()


def _strength_bundle(config, merged):
    from jaxvit_interp.pipeline.parts import strength_part

    return strength_part(merged, has_cls_token=config.has_cls_token)


def _special_reducer(config, settings, keep):
    from jaxvit_interp.strength.aggregate import SpecialMassReducer

    return SpecialMassReducer() if config.num_prefix_tokens else None


def _special_bundle(config, merged):
    from jaxvit_interp.strength.aggregate import special_part

    return special_part(merged) if config.num_prefix_tokens else {}


def _patterns_reducer(config, settings, keep):
    from jaxvit_interp.patterns.collect import PatternReducer

    return PatternReducer(pattern_kinds(config, settings))


def _rollout_reducer(config, settings, keep):
    from jaxvit_interp.rollout.measure import FinalRolloutReducer

    return FinalRolloutReducer()


def _rollout_bundle(config, merged):
    from jaxvit_interp.rollout.measure import rollout_part

    keys = CHUNK_KEYS["rollout"]
    return rollout_part(merged[keys["map"]], merged[keys["contribution"]])


def _attention_reducer(config, settings, keep):
    from jaxvit_interp.model.run import KeptAttentionReducer

    if not len(keep):
        return None
    return KeptAttentionReducer(config.num_prefix_tokens, keep=np.asarray(keep))


PASS_ANALYSES: tuple[PassAnalysis, ...] = (
    PassAnalysis(
        name="strength",
        reducer=_strength_reducer,
        chunk_arrays=lambda out: _renamed(
            "strength", {f: out[f] for f in STRENGTH_FIELDS}, np.float32
        ),
        marker=None,
        bundle=_strength_bundle,
    ),
    PassAnalysis(
        name="special",
        reducer=_special_reducer,
        chunk_arrays=lambda out: _renamed("special", out, np.float32),
        marker="special_to",
        bundle=_special_bundle,
        part="strength",
    ),
    PassAnalysis(
        name="patterns",
        reducer=_patterns_reducer,
        chunk_arrays=lambda out: _renamed("patterns", out, np.float32),
        marker=None,
    ),
    PassAnalysis(
        name="rollout",
        reducer=_rollout_reducer,
        chunk_arrays=lambda out: _renamed("rollout", out, np.float32),
        marker="rollout_map",
        bundle=_rollout_bundle,
    ),
    PassAnalysis(
        name="attention",
        reducer=_attention_reducer,
        chunk_arrays=lambda out: _renamed("attention", out),
        # Only the power code's chunks have it: a chunk of linear codes is encoded again.
        marker="attention_special",
    ),
)
