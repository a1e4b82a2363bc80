"""Learned attention patterns (paper §5.4): what each head has learned, and which heads share it.

Pipeline, one pattern kind at a time (``"cls"`` or ``"patch"``; see :mod:`.extract`):

1. :func:`collect_patterns` (or :func:`extract_patterns` on attention you already have) gives raw
   patterns ``[image, layer, head, h, w]``;
2. :func:`normalize_patterns` brings them to the autoencoder's ``[0, 1]`` scale;
3. :func:`train_autoencoder` trains (or reuses from its ``workdir``) a :class:`PatternAutoencoder`;
4. :func:`embed_patterns` encodes, projects to 2-D, clusters and picks each cluster's
   representative, giving a :class:`PatternEmbedding`;
5. :func:`embedding_summary` gives each head's view over the images: its mean position, its most
   common cluster, the cluster sizes and the embedding's density map.

:func:`shared_pattern_space` (:mod:`.shared`) does the same for several runs at once, from their
results bundles' stored attention: their patterns on one common grid, one autoencoder per kind,
clustered once, so a cluster means the same pattern in every model (the comparison site's
shared pattern space).

:mod:`.synthetic` plants known patterns in attention maps, the ground truth the tests check the
pipeline against.
"""

from jaxvit_interp.patterns.autoencoder import PatternAutoencoder
from jaxvit_interp.patterns.collect import collect_patterns
from jaxvit_interp.patterns.embed import (
    PatternEmbedding,
    choose_k,
    density_map,
    embed_patterns,
    embedding_summary,
    kmeans,
    majority_cluster,
    nearest_members,
    project,
)
from jaxvit_interp.patterns.extract import (
    NORMALIZATIONS,
    PATTERN_KINDS,
    check_attention,
    cls_pattern,
    extract_patterns,
    normalize_patterns,
    offset_counts,
    patch_pattern,
    pattern_shape,
)
from jaxvit_interp.patterns.shared import (
    SharedPatternSettings,
    SharedPatternSpace,
    kind_table,
    nearest_heads,
    resample_patterns,
    shared_pattern_space,
)
from jaxvit_interp.patterns.synthetic import PLANTED_KINDS, planted_attention, planted_masks
from jaxvit_interp.patterns.train import (
    MIN_PATTERNS,
    AutoencoderSettings,
    TrainedAutoencoder,
    restore_autoencoder,
    save_autoencoder,
    train_autoencoder,
)

__all__ = [
    "MIN_PATTERNS",
    "NORMALIZATIONS",
    "PATTERN_KINDS",
    "PLANTED_KINDS",
    "AutoencoderSettings",
    "PatternAutoencoder",
    "PatternEmbedding",
    "SharedPatternSettings",
    "SharedPatternSpace",
    "TrainedAutoencoder",
    "check_attention",
    "choose_k",
    "density_map",
    "cls_pattern",
    "collect_patterns",
    "embed_patterns",
    "embedding_summary",
    "extract_patterns",
    "kind_table",
    "kmeans",
    "majority_cluster",
    "nearest_heads",
    "nearest_members",
    "normalize_patterns",
    "offset_counts",
    "patch_pattern",
    "pattern_shape",
    "planted_attention",
    "planted_masks",
    "project",
    "resample_patterns",
    "restore_autoencoder",
    "save_autoencoder",
    "shared_pattern_space",
    "train_autoencoder",
]
