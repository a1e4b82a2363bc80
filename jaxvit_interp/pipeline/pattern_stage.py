"""The pattern stage of ``analyze``: an autoencoder over each kind of attention pattern, trained
data-parallel over every device of every process, then every pattern encoded, projected to 2-D
and clustered (:mod:`jaxvit_interp.patterns`).

The patterns come from the run folder's gathered files (memory-mapped,
:meth:`~jaxvit_interp.pipeline.run_folder.RunFolder.gather`) and are read, normalised and encoded
a batch at a time, so the stage's memory does not grow with the number of images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxvit_interp.pipeline.parts import pattern_part
from jaxvit_interp.pipeline.subsets import subset
from jaxvit_interp.progress import start_progress
from jaxvit_interp.storage import read_rows

__all__ = ["ENCODE_BATCH", "encode_patterns", "pattern_stage_part", "train_pattern_models"]

# Patterns normalised and encoded at once: the default batch of TrainedAutoencoder.encode, so
# that the latents are those of one call over them all (ViT-B/16: 24 MB of patch patterns).
ENCODE_BATCH = 8192


def train_pattern_models(config, patterns, settings, out: Path, mesh, progress: bool) -> dict:
    """The pattern autoencoder of each kind, trained data-parallel over every device of every
    process (each process calls this with the same patterns: the same file, read by index)."""
    from jaxvit_interp.patterns.extract import normalize_patterns
    from jaxvit_interp.patterns.train import train_autoencoder

    models = {}
    for kind, stored in patterns.items():
        flat = stored.reshape(-1, *stored.shape[-2:])
        pick = subset(len(flat), settings.pattern_samples, settings.seed)
        with start_progress(
            progress, total=1, desc=f"training the {kind} pattern autoencoder"
        ) as stage:
            models[kind] = train_autoencoder(
                np.asarray(normalize_patterns(read_rows(flat, pick), config.num_patches)),
                settings.autoencoder,
                workdir=out / f"autoencoder-{kind}",
                mesh=mesh,
                progress=stage.share(1),
            )
    return models


def encode_patterns(model, flat: np.ndarray, num_patches: int) -> np.ndarray:
    """Latents ``[pattern, latent]`` of the raw patterns ``flat`` ``[pattern, h, w]`` (memory-
    mapped), read, normalised and encoded a batch at a time.

    The batches are those one ``model.encode`` call over every pattern makes (as even as they can
    be, the last zero-padded to the same size), so the latents are that call's; only one batch
    of patterns is ever in memory.
    """
    from jaxvit_interp.patterns.extract import normalize_patterns

    batch = -(-len(flat) // -(-len(flat) // ENCODE_BATCH))
    latents = []
    for start in range(0, len(flat), batch):
        block = np.asarray(
            normalize_patterns(read_rows(flat, slice(start, start + batch)), num_patches),
            np.float32,
        )
        count = len(block)
        if count < batch:
            block = np.concatenate(
                [block, np.zeros((batch - count, *block.shape[1:]), block.dtype)]
            )
        latents.append(model.encode(block, batch_size=batch)[:count])
    return np.concatenate(latents)


def pattern_stage_part(config, patterns, models, settings, progress: bool) -> dict[str, np.ndarray]:
    """Encoding, projection and clustering of every pattern of each kind (one process's work)."""
    from jaxvit_interp.patterns.embed import embed_latents
    from jaxvit_interp.patterns.extract import normalize_patterns

    part = {}
    for kind, model in models.items():
        raw = patterns[kind]  # [image, layer, head, h, w], memory-mapped
        flat = raw.reshape(-1, *raw.shape[-2:])
        bar = start_progress(progress, total=1, desc=f"projecting the {kind} patterns")
        latents = encode_patterns(model, flat, config.num_patches)
        emb = embed_latents(
            model,
            latents.reshape(*raw.shape[:-2], -1),
            lambda index, flat=flat: np.asarray(
                normalize_patterns(read_rows(flat, index), config.num_patches)
            ),
            projection=settings.projection,
            k=settings.clusters,
            seed=settings.seed,
        )
        bar.update(1)
        bar.close()
        part.update(
            pattern_part(
                kind,
                positions=emb.xy,
                clusters=emb.labels,
                representatives=emb.representative,
                centres=emb.decoded_centre,
            )
        )
    return part
