"""The pattern pipeline finds structure that is really there.

Attention maps with planted patterns (self, the four neighbours, row, column, uniform global,
CLS-only; see :mod:`jaxvit_interp.patterns.synthetic`) plus logit noise go through the whole
pipeline: patch patterns -> normalisation -> autoencoder -> latents -> k-means with k chosen by
silhouette. The patch pattern feeds the clustering because every planted kind is a pattern of
patches (the CLS query row carries noise only); CLS-only shows there as a map with almost no
patch mass, which the mass-keeping "log" normalisation keeps apart from uniform attention.
"""

import numpy as np
from sklearn.metrics import adjusted_rand_score

from jaxvit_interp.patterns import PLANTED_KINDS, embed_patterns


def test_clusters_recover_planted_patterns(planted, trained):
    labels, patterns = planted
    model, _ = trained
    embedding = embed_patterns(model, patterns, projection=None, k_range=(2, 12))
    ari = adjusted_rand_score(labels.ravel(), embedding.labels.ravel())
    assert embedding.k == len(PLANTED_KINDS), embedding.silhouette
    assert ari >= 0.9, (ari, embedding.silhouette)
    # Each cluster's representative is a real map of the kind most of its members are.
    for c in range(embedding.k):
        majority = np.bincount(labels[embedding.labels == c]).argmax()
        assert labels[tuple(embedding.representative_index[c])] == majority
