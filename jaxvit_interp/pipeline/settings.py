"""Settings of one analysis run, and the fingerprint that tells whether a folder holds this run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import numpy as np

from jaxvit_interp.errors import InputError
from jaxvit_interp.importance.pruning import GREEDY_MAX_HEADS
from jaxvit_interp.patterns.train import MIN_PATTERNS, AutoencoderSettings
from jaxvit_interp.quantities import THUMBNAIL_SIZE

# attention_images: keep every image's attention.
ALL_IMAGES = "all"


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnalysisSettings:
    """What ``analyze`` computes and how.

    Attributes:
      chunk_images: images per resumable chunk; a chunk is written to disk as soon as it is done.
      batch_size: images per device pass inside a chunk (None: as the memory budget allows).
      memory_budget_bytes: per-device working-set budget of the ablation engine (None: default).
      partial_images: images (chosen at random with ``seed``) that get partial pruning of every
        head in all six modes; 0 skips partial pruning.
      attention_images: ``"all"`` (every image's attention matrices are kept, as 8-bit codes
        (:mod:`jaxvit_interp.attention_codes`): in the bundle about 5.8 MB an image for
        ViT-B/16 and 137 MB for DINOv2-S/14 with registers at 518 px), or a cap: that many
        images, chosen at random with ``seed`` independently of the partial-pruning ones, for
        very large sets.
      thumbnail_size: longest side of the thumbnails kept for the site, in pixels.
      pattern_kinds: which patterns feed the autoencoders (``cls`` needs a CLS token).
      pattern_samples: most patterns (sampled with ``seed``) each autoencoder trains on.
      clusters: number of pattern clusters; None chooses it from the data.
      projection: ``umap`` or ``tsne`` for the 2-D maps.
      autoencoder: :class:`AutoencoderSettings` of the pattern autoencoders.
      set_images: images (chosen at random with ``seed``, independently of the other subsets)
        on which the head-set stage measures pairwise interactions and pruning curves with set
        ablations (:mod:`jaxvit_interp.pipeline.head_sets`); 0 skips the stage.
      interaction_heads: the heads with the highest mean ``prob_drop`` whose pairs interact
        (16 heads: 120 pairs; at most ``L * H``).
      random_orders: random pruning orders beside the importance and greedy ones (0: none).
      greedy_max_heads: the greedy pruning curve runs only for a model of at most this many
        heads in all (it takes about ``(L*H)^2 / 2`` set ablations); 0 never runs it. The
        default is the library's own cap, :data:`~jaxvit_interp.importance.pruning.GREEDY_MAX_HEADS`.
      seed: seeds every random choice of the run.
    """

    chunk_images: int = 64
    batch_size: int | None = None
    memory_budget_bytes: int | None = None
    partial_images: int = 64
    attention_images: int | str = ALL_IMAGES
    thumbnail_size: int = THUMBNAIL_SIZE
    pattern_kinds: tuple[str, ...] = ("cls", "patch")
    pattern_samples: int = 20_000
    clusters: int | None = None
    projection: str = "umap"
    autoencoder: AutoencoderSettings = AutoencoderSettings()
    set_images: int = 32
    interaction_heads: int = 16
    random_orders: int = 3
    greedy_max_heads: int = GREEDY_MAX_HEADS
    seed: int = 0

    def __post_init__(self):
        # Every setting is checked here, before a run touches the disk: a mistake found after
        # hours of ablations (or after the run folder is made) costs the user the run.
        if isinstance(self.pattern_kinds, str):
            object.__setattr__(self, "pattern_kinds", (self.pattern_kinds,))
        object.__setattr__(self, "pattern_kinds", tuple(self.pattern_kinds))
        for name, least, optional in (
            ("chunk_images", 1, False),
            ("batch_size", 1, True),
            ("memory_budget_bytes", 1, True),
            ("partial_images", 0, False),
            ("thumbnail_size", 1, False),
            ("pattern_samples", MIN_PATTERNS, False),
            ("clusters", 1, True),
            ("set_images", 0, False),
            ("interaction_heads", 2, False),
            ("random_orders", 0, False),
            ("greedy_max_heads", 0, False),
            ("seed", None, False),
        ):
            _check_int(name, getattr(self, name), least, optional)
        if self.attention_images != ALL_IMAGES:
            try:
                _check_int("attention_images", self.attention_images, 0, False)
            except InputError:
                raise InputError(
                    f"attention_images must be {ALL_IMAGES!r} or a count of images, got "
                    f"{self.attention_images!r}"
                ) from None
        unknown = set(self.pattern_kinds) - {"cls", "patch"}
        if unknown or not self.pattern_kinds:
            raise InputError(
                f"pattern_kinds must be a non-empty subset of cls, patch; got {self.pattern_kinds}"
            )
        if self.projection not in ("umap", "tsne"):
            raise InputError(f"projection must be 'umap' or 'tsne', got {self.projection!r}")
        if not isinstance(self.autoencoder, AutoencoderSettings):
            raise InputError(
                f"autoencoder must be AutoencoderSettings (or a table of its fields), got "
                f"{self.autoencoder!r}"
            )

    def attention_count(self, num_images: int) -> int:
        """How many of ``num_images`` images keep their attention."""
        if self.attention_images == ALL_IMAGES:
            return num_images
        return min(num_images, int(self.attention_images))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["autoencoder"] = self.autoencoder.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AnalysisSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown analysis setting(s): {', '.join(unknown)}")
        d = dict(d)
        if isinstance(d.get("autoencoder"), dict):
            d["autoencoder"] = AutoencoderSettings.from_dict(d["autoencoder"])
        return cls(**d)


def _check_int(name: str, value: Any, least: int | None, optional: bool) -> None:
    """``value`` is an integer (not a bool) of at least ``least``; None only when optional."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InputError(f"{name} must be an integer, got {value!r}")
    if least is not None and value < least:
        raise InputError(f"{name} must be at least {least}, got {value}")


def run_fingerprint(*, model_identity: dict, image_digest: str, settings: AnalysisSettings) -> str:
    """A hash of everything that decides a run's results (but not of where it is written)."""
    blob = json.dumps(
        {"model": model_identity, "images": image_digest, "settings": settings.to_dict()},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
