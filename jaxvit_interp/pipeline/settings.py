"""Settings of one analysis run, and the fingerprint that tells whether a folder holds this run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from jaxvit_interp.explain.baselines import BASELINE_KINDS
from jaxvit_interp.importance.pruning import GREEDY_MAX_HEADS
from jaxvit_interp.patterns.train import MIN_PATTERNS, AutoencoderSettings
from jaxvit_interp.quantities import ABLATION_KINDS, PATTERN_KINDS, THUMBNAIL_SIZE
from jaxvit_interp.setting import check_fields, declared, from_table, setting

# attention_images: keep every image's attention.
ALL_IMAGES = "all"
# What a budget of None means (the engine's default_memory_budget).
DEFAULT_BUDGET = (
    "half the free memory of an accelerator; on a CPU a sixteenth of RAM, at most 1.25 GiB"
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnalysisSettings:
    """What ``analyze`` computes and how.

    Each field is declared once, with its help, bounds and flag (:mod:`jaxvit_interp.setting`):
    the ``analyze`` flags, the ``[analysis]`` table of a ``--config`` file and of a site spec are
    read and checked by those declarations.

    Attributes:
      chunk_images: images per resumable chunk; a chunk is written to disk as soon as it is done.
      batch_size: images per device pass inside a chunk (None: as the memory budget allows).
      memory_budget_bytes: per-device working-set budget of the ablation engine (None: default).
        Its flag, ``--memory-budget-mb``, takes MiB.
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
      ablations: the ablation kinds (:data:`~jaxvit_interp.quantities.ABLATION_KINDS`) whose
        single-head importance the run computes on every image; the first is the run's kind
        for everything else (the ``importance`` metrics the views rank heads by, the head-set
        stage), each further one's metrics sit beside them in the bundle
        (:func:`~jaxvit_interp.quantities.ablation_array`).
      reference_images: images (chosen at random with ``seed``, independently of the other
        subsets) whose mean head outputs a ``mean`` ablation puts in a head's place: the same
        sample for every chunk. A ``resample`` ablation pairs each image with another analysed
        image, a seeded derangement (no image with itself), so it needs two images or more.
      shapley_images: images (chosen at random with ``seed``, independently of the other
        subsets) on which the Shapley stage (:mod:`jaxvit_interp.pipeline.shapley_stage`)
        shares out ``prob_drop`` among the heads with the run's first ablation kind; 0 (the
        default: it takes minutes) skips it. A change of it, ``shapley_permutations`` or
        ``shapley_stderr`` recomputes that stage only (:data:`STAGE_SETTINGS`).
      shapley_permutations: the most permutations the Shapley stage samples, at least 4; it
        samples pairs of a permutation and its reverse, so an odd number counts one less.
      shapley_stderr: the Shapley stage stops once every head's standard error is below this.
      explain_images: images (chosen at random with ``seed``, independently of the other
        subsets) on which the explanations stage (:mod:`jaxvit_interp.pipeline.explain_stage`)
        maps what each image's label rests on with every default explanation method, and
        measures the deletion and insertion curves of those maps and of every head's attention;
        0 (the default) skips it. A change of it, ``explain_steps`` or ``explain_baseline``
        recomputes that stage only (:data:`STAGE_SETTINGS`).
      explain_steps: the points of each deletion or insertion curve after its start.
      explain_baseline: what replaces a patch (:data:`~jaxvit_interp.explain.BASELINE_KINDS`):
        the curves' baseline, occlusion's and integrated gradients' path start.
      seed: seeds every random choice of the run.
    """

    chunk_images: int = setting(64, "images per resumable chunk", least=1)
    batch_size: int | None = setting(
        None, "images per device pass", least=1, none="fit the memory budget"
    )
    memory_budget_bytes: int | None = setting(
        None,
        "per-device working-set budget in MiB for the ablations",
        least=1,
        none=DEFAULT_BUDGET,
        flag="--memory-budget-mb",
        flag_unit=2**20,
    )
    partial_images: int = setting(
        64, "images that get partial pruning of every head; 0: none", least=0
    )
    attention_images: int | str = setting(
        ALL_IMAGES,
        f"images whose full attention is kept for the site: {ALL_IMAGES!r}, or a count of "
        "images chosen at random; 0: none",
        least=0,
        word=ALL_IMAGES,
    )
    thumbnail_size: int = setting(
        THUMBNAIL_SIZE, "longest side of the thumbnails kept for the site, in pixels", least=1
    )
    pattern_kinds: tuple[str, ...] = setting(
        PATTERN_KINDS,
        "which patterns feed the autoencoders, separated by commas; cls needs a CLS token",
        type=str,
        choices=PATTERN_KINDS,
        many=True,
    )
    pattern_samples: int = setting(
        20_000, "most patterns each autoencoder trains on", least=MIN_PATTERNS
    )
    clusters: int | None = setting(
        None, "number of pattern clusters", least=1, none="chosen from the data"
    )
    projection: str = setting(
        "umap", "2-D projection of the pattern latents", type=str, choices=("umap", "tsne")
    )
    autoencoder: AutoencoderSettings = setting(
        AutoencoderSettings(),
        "how the pattern autoencoders are built and trained",
        table=AutoencoderSettings,
    )
    set_images: int = setting(
        32,
        "images on which pairs and sets of heads are pruned together: interactions of the top "
        "heads and pruning curves; 0 skips that stage",
        least=0,
    )
    interaction_heads: int = setting(
        16, "the most important heads whose pairs are measured for interactions", least=2
    )
    random_orders: int = setting(
        3, "random pruning orders beside the importance and greedy ones", least=0
    )
    greedy_max_heads: int = setting(
        GREEDY_MAX_HEADS,
        "compute the greedy pruning curve only for models of at most this many heads; it "
        "takes about (layers x heads)^2 / 2 set ablations; 0: never",
        least=0,
    )
    shapley_images: int = setting(
        0,
        "images on which each head's Shapley value of prob_drop is sampled; 0 skips that "
        "stage, which takes minutes (the digits model: about 3 on a CPU)",
        least=0,
    )
    shapley_permutations: int = setting(
        128,
        "the most permutations of the heads the Shapley stage samples, in pairs of one and its "
        "reverse (an odd number counts one less)",
        least=4,
    )
    shapley_stderr: float = setting(
        0.01,
        "the Shapley stage stops once every head's standard error is below this",
        type=float,
        more_than=0,
    )
    explain_images: int = setting(
        0,
        "images whose explanation maps and their deletion and insertion curves are computed, "
        "with every head's attention map's curves; 0 skips that stage",
        least=0,
    )
    explain_steps: int = setting(
        10, "points of each deletion or insertion curve after its start", least=1
    )
    explain_baseline: str = setting(
        "zero",
        "what replaces a patch in the explanations stage: zero, mean (the image's mean colour) "
        "or blur (the image blurred by half a patch side)",
        type=str,
        choices=BASELINE_KINDS,
    )
    seed: int = setting(0, "seed of every random choice", least=0)
    ablations: tuple[str, ...] = setting(
        ("zero",),
        "ablation kinds whose single-head importance is computed, separated by commas: zero "
        "(a head's output times 0), mean (its mean over --reference-images images) or resample "
        "(its output on another analysed image, paired by a seeded derangement); the first is "
        "the run's kind for rankings and head sets",
        type=str,
        choices=ABLATION_KINDS,
        many=True,
        distinct=True,
    )
    reference_images: int = setting(
        256,
        "images, chosen at random, whose mean head outputs a mean ablation puts in an ablated "
        "head's place",
        least=1,
    )

    def __post_init__(self):
        # Every setting is checked here, before a run touches the disk: a mistake found after
        # hours of ablations (or after the run folder is made) costs the user the run.
        check_fields(self)

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
    def from_dict(cls, d: dict[str, Any], prefix: str = "") -> AnalysisSettings:
        """The settings from a table of some of the fields (the rest keep their defaults): a
        TOML ``[analysis]`` table, or ``to_dict``'s. An unknown key or a bad value is an
        :class:`InputError` naming it with ``prefix`` (``"analysis."``)."""
        return from_table(cls, d, prefix)


# Settings added after run folders were first written: left out of the fingerprint at their
# defaults, so a folder analysed before they existed (with what their defaults compute) is
# resumed, not refused as another run.
LATER_SETTINGS = ("ablations", "reference_images")
# Settings of a stage that keeps its result in the run folder with the settings it was computed
# with (:mod:`jaxvit_interp.pipeline.shapley_stage`, :mod:`~jaxvit_interp.pipeline.explain_stage`):
# left out of the fingerprint, so a change of them recomputes that stage alone, in a complete run
# too, rather than refusing the folder. Each stage is keyed by its own.
SHAPLEY_SETTINGS = ("shapley_images", "shapley_permutations", "shapley_stderr")
EXPLAIN_SETTINGS = ("explain_images", "explain_steps", "explain_baseline")
STAGE_SETTINGS = (*SHAPLEY_SETTINGS, *EXPLAIN_SETTINGS)


def fingerprint_settings(settings: AnalysisSettings) -> dict[str, Any]:
    """The settings a run's fingerprint hashes: every one but :data:`STAGE_SETTINGS`, and
    :data:`LATER_SETTINGS` only where they differ from their defaults (``reference_images`` only
    where a ``mean`` ablation reads it)."""
    d = {k: v for k, v in settings.to_dict().items() if k not in STAGE_SETTINGS}
    defaults = declared(AnalysisSettings)
    for name in LATER_SETTINGS:
        if d[name] == defaults[name].default:
            del d[name]
    if "mean" not in settings.ablations:
        d.pop("reference_images", None)
    return d


def run_fingerprint(*, model_identity: dict, image_digest: str, settings: AnalysisSettings) -> str:
    """A hash of everything that decides a run's results (but not of where it is written)."""
    blob = json.dumps(
        {
            "model": model_identity,
            "images": image_digest,
            "settings": fingerprint_settings(settings),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
