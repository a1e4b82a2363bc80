"""One pattern space for the heads of several runs: a cluster means the same pattern in every model.

Each run's patterns come from its results bundle's ``attention`` part (every head's attention on
the images the analysis kept it for), decoded a few images at a time and read as the patterns of
:mod:`.extract`, one kind at a time (``"cls"`` only from runs with a CLS token). Runs differ in
patch and image size, so the patterns are first brought to one common grid
(:func:`resample_patterns`: area-weighted, so a map's mass per area is kept), then normalised
alike (:func:`common_scale`), and ONE autoencoder is trained on all runs' patterns of a kind,
then every pattern is encoded, projected to 2-D and clustered once
(:func:`~jaxvit_interp.patterns.embed.embed_latents`). A head of one run and a head of another
that land in one cluster look alike, whatever their models.

:func:`shared_pattern_space` is the entry point and returns a :class:`SharedPatternSpace`;
:func:`kind_table` (which runs have which clusters in which layers) and :func:`nearest_heads`
(each head's nearest heads in every other run) are pure functions of its arrays. With a
``directory`` the space is stored there (:func:`save_shared_space`) and, asked again for the
same runs and settings, read back instead of trained again (``reused=True``)::

    shared.json         format, settings, each run's identity, each kind's runs and cluster count
    <kind>.npz          per pattern: run, image, layer, head, position, cluster, latent; the
                        clusters' representatives, decoded centres and latent centres
    autoencoder-<kind>/ the kind's autoencoder checkpoint (orbax, train_autoencoder's workdir)

A run's identity is its name, model shape, checkpoint, attention code, the ids of the images its
patterns came from and a SHA-256 of their stored rows' steps (each attention row's scale: any
other analysis changes them), so a changed run or setting trains again, and a stored space whose
files do not hold what its ``shared.json`` says is refused (:class:`InputError`) or, through
:func:`load_or_compute`, computed again.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvit_interp.attention_codes import decode_stored
from jaxvit_interp.bundle import ResultsBundle, special_tokens
from jaxvit_interp.compare import relative_depth
from jaxvit_interp.errors import InputError
from jaxvit_interp.patterns.embed import embed_latents
from jaxvit_interp.patterns.extract import (
    PATTERN_KINDS,
    extract_patterns,
    normalize_patterns,
    pattern_shape,
)
from jaxvit_interp.patterns.train import (
    MIN_PATTERNS,
    AutoencoderSettings,
    train_autoencoder,
)
from jaxvit_interp.progress import ProgressArg, start_progress
from jaxvit_interp.setting import check_fields, from_table, setting
from jaxvit_interp.storage import load_npz, save_npz, write_text
from jaxvit_interp.summary import Summarized, listed

__all__ = [
    "SHARED_DIR",
    "SharedKind",
    "SharedPatternSettings",
    "SharedPatternSpace",
    "choose_attention_rows",
    "common_scale",
    "kind_table",
    "load_or_compute",
    "load_shared_space",
    "nearest_heads",
    "resample_matrix",
    "resample_patterns",
    "save_shared_space",
    "shared_pattern_space",
]

Array = jax.Array

# The folder of the shared pattern space in a comparison site's folder.
SHARED_DIR = "shared-patterns"
SHARED_INDEX = "shared.json"
# Bumped when the stored layout or the way the space is computed changes meaning.
SHARED_FORMAT = "jaxvit_interp.patterns.shared/1"
# Bytes of float64 attention decoded at once (a ViT-B/16 image is 45 MB of it: a few images).
DECODE_BYTES = 2**27


@dataclasses.dataclass(frozen=True, kw_only=True)
class SharedPatternSettings:
    """How the shared pattern space is built.

    Attributes:
      kinds: the pattern kinds (``"cls"`` only for the runs with a CLS token).
      images_per_run: most attention images each run gives patterns of (the images every run
        shares first).
      grid: the common patch grid ``(rows, cols)``; None: the grid of the run with the fewest
        patches (so no run's patterns are made finer than they are).
      pattern_samples: most patterns (sampled with ``seed``) the autoencoder of a kind trains on.
      clusters: number of clusters; None chooses it by silhouette.
      projection: ``"umap"`` or ``"tsne"`` for the 2-D map.
      neighbours: nearest heads kept per head in each other run.
      seed: seeds the sample, the projection and k-means.
      autoencoder: the autoencoder's :class:`AutoencoderSettings`.
    """

    kinds: tuple[str, ...] = setting(
        PATTERN_KINDS,
        "the pattern kinds",
        type=str,
        choices=PATTERN_KINDS,
        many=True,
        distinct=True,
    )
    images_per_run: int = setting(16, "most attention images each run gives patterns of", least=1)
    grid: tuple[int, ...] | None = setting(
        None, "the common patch grid, rows and columns", least=1, many=True, none="the smallest"
    )
    pattern_samples: int = setting(
        20_000, "most patterns each autoencoder trains on", least=MIN_PATTERNS
    )
    clusters: int | None = setting(None, "number of clusters", least=1, none="chosen")
    projection: str = setting(
        "umap", "2-D projection of the latents", type=str, choices=("umap", "tsne")
    )
    neighbours: int = setting(3, "nearest heads kept per head in each other run", least=1)
    seed: int = setting(0, "seeds the sample, the projection and k-means", least=0)
    autoencoder: AutoencoderSettings = setting(
        AutoencoderSettings(),
        "how the shared autoencoders are built and trained",
        table=AutoencoderSettings,
    )

    def __post_init__(self):
        check_fields(self)
        if self.grid is not None and len(self.grid) != 2:
            raise InputError(f"grid {self.grid}: expected two sizes, rows and columns")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["grid"] = None if self.grid is None else list(self.grid)
        d["autoencoder"] = self.autoencoder.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], prefix: str = "") -> SharedPatternSettings:
        """The settings from a table of some of the fields (``autoencoder`` a table of its own)."""
        return from_table(cls, d, prefix)


# --- pure kernels -------------------------------------------------------------------------------


def resample_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``[size_out, size_in]`` area weights: row ``o`` holds the share of output cell ``o`` that
    each input cell covers, when both divide one interval (``[0, 1]``) evenly; rows sum to 1.

    The identity when the sizes match; a coarser output averages the input cells it covers (in
    proportion to the overlap), a finer one repeats the cell it lies in (split at boundaries).
    """
    edges_in = np.arange(size_in + 1) / size_in
    edges_out = np.arange(size_out + 1) / size_out
    lo = np.maximum(edges_out[:-1, None], edges_in[None, :-1])
    hi = np.minimum(edges_out[1:, None], edges_in[None, 1:])
    return (np.maximum(hi - lo, 0.0) * size_out).astype(np.float64)


@functools.partial(jax.jit, static_argnames=("shape",))
def resample_patterns(patterns: Array, shape: tuple[int, int]) -> Array:
    """Patterns ``[..., h, w]`` on a ``shape`` ``(h', w')`` grid, area-weighted
    (:func:`resample_matrix` along each axis): each output cell is the mean of the input over its
    area, so a map of attention *per patch relative to uniform* keeps its meaning, and a uniform
    map stays uniform. Patterns already of ``shape`` come back unchanged."""
    h, w = patterns.shape[-2:]
    if (h, w) == tuple(shape):
        return patterns
    rows = jnp.asarray(resample_matrix(h, shape[0]), patterns.dtype)
    cols = jnp.asarray(resample_matrix(w, shape[1]), patterns.dtype)
    return jnp.einsum(
        "ah,...hw,bw->...ab", rows, patterns, cols, precision=jax.lax.Precision.HIGHEST
    )


@functools.partial(jax.jit, static_argnames=("num_patches", "shape", "common_patches"))
def common_scale(
    patterns: Array, num_patches: int, shape: tuple[int, int], common_patches: int
) -> Array:
    """Raw patterns ``[..., h, w]`` of a run of ``num_patches`` patches -> the autoencoder's scale
    on the common grid ``shape`` of ``common_patches`` patches.

    Both kinds hold attention a patch (or CLS) pays one key patch, whose uniform level is
    ``1/P``: a 16x16 grid's maps are 4 times fainter than an 8x8 grid's for the same way of
    looking. So each run's values are first made relative to its own uniform level (``a P``,
    resolution-free: 1 is uniform whatever the grid), resampled by area (which keeps that
    density), and brought back to the common grid's attention (``/ P_common``) before the
    ``"log"`` normalisation of :func:`~jaxvit_interp.patterns.extract.normalize_patterns` with
    ``P_common``. Normalising each run with its own ``P`` instead would put uniform attention at
    ``log 2 / log(2P)``, a different level in every run; ``"max"`` would lose how much attention
    a map holds (uniform over patches vs everything to CLS), which tells patterns apart.
    """
    density = resample_patterns(patterns * num_patches, shape)
    return normalize_patterns(density / common_patches, common_patches, "log")


def choose_attention_rows(image_ids: Sequence[Sequence[str]], limit: int) -> list[np.ndarray]:
    """Which of each run's attention images give patterns: ``[run] -> rows`` (indices into the
    run's attention images, in the order chosen).

    Args:
      image_ids: per run, the ids of its attention images (``meta["image_ids"]`` at the
        attention part's ``image_index``).
      limit: most images per run.

    The images every run has come first (in the first run's order), so the same images are
    compared where possible; then each run's other images in its own order, up to ``limit``.
    """
    everywhere = set(image_ids[0]).intersection(*map(set, image_ids[1:]))
    shared = [i for i in dict.fromkeys(image_ids[0]) if i in everywhere][:limit]
    rows = []
    for ids in image_ids:
        where = {}
        for r, i in enumerate(ids):
            where.setdefault(i, r)
        first = [where[i] for i in shared]
        taken = set(first)
        rest = [r for r in range(len(ids)) if r not in taken]
        rows.append(np.asarray((first + rest)[:limit], np.int64))
    return rows


def kind_table(head_cluster: Sequence[np.ndarray], num_clusters: int) -> list[np.ndarray]:
    """How many heads of each run have each cluster as their most common one, per layer.

    Args:
      head_cluster: per run, ``[L, H]`` each head's most common cluster (-1: none).
      num_clusters: ``k``.

    Returns:
      per run, ``[k, L]`` counts (the layer's relative depth is
      :func:`~jaxvit_interp.compare.relative_depth` of ``L``).
    """
    out = []
    for clusters in head_cluster:
        clusters = np.asarray(clusters)
        counts = np.zeros((num_clusters, clusters.shape[0]), np.int64)
        for layer in range(clusters.shape[0]):
            valid = clusters[layer][clusters[layer] >= 0]
            counts[:, layer] = np.bincount(valid, minlength=num_clusters)[:num_clusters]
        out.append(counts)
    return out


def nearest_heads(
    head_latents: Sequence[np.ndarray], count: int
) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """Each head's ``count`` nearest heads in every other run.

    Distances are Euclidean between heads' mean latents (over their images): the space the
    autoencoder learned and k-means clusters in. The 2-D projection would be cheaper to read
    but tears and squeezes neighbourhoods, so two heads side by side on the map need not be alike.

    Args:
      head_latents: per run, ``[L, H, d]`` each head's mean latent.
      count: neighbours per head (at most the other run's heads).

    Returns:
      ``{(a, b): (index [L_a * H_a, n], distance [L_a * H_a, n])}`` for every ordered pair of
      runs ``a != b``: flat head indices (``layer * H_b + head``) into run ``b``, nearest first
      (ties: the lower index).
    """
    flat = [np.asarray(z, np.float64).reshape(-1, np.shape(z)[-1]) for z in head_latents]
    out = {}
    for a, za in enumerate(flat):
        for b, zb in enumerate(flat):
            if a == b:
                continue
            d = np.sqrt(((za[:, None, :] - zb[None, :, :]) ** 2).sum(-1))
            n = min(count, len(zb))
            order = np.argsort(d, axis=1, kind="stable")[:, :n]
            out[(a, b)] = (order.astype(np.int32), np.take_along_axis(d, order, 1))
    return out


# --- results ------------------------------------------------------------------------------------


@dataclasses.dataclass(kw_only=True, repr=False)
class SharedKind:
    """The shared space of one pattern kind.

    ``runs`` are indices into :attr:`SharedPatternSpace.names` of the runs that have this kind
    (``"cls"``: those with a CLS token and stored attention); the per-run lists follow them.

    Attributes:
      kind: ``"cls"`` or ``"patch"``.
      runs: the runs in this space.
      shape: ``(h, w)`` of a pattern on the common grid.
      run, image, layer, head: ``[M]`` each pattern's run (index into ``names``), image (row
        into its run's ``image_ids`` as :attr:`SharedPatternSpace.image_ids` lists them), layer
        and head.
      xy: ``[M, 2]`` each pattern's 2-D position.
      cluster: ``[M]`` its cluster.
      latent: ``[M, d]`` its latent.
      representative: ``[k, h, w]`` each cluster's member nearest its centre (normalised).
      decoded_centre: ``[k, h, w]`` the decoding of each cluster's latent centre.
      centres: ``[k, d]`` each cluster's mean latent.
    """

    kind: str
    runs: list[int]
    shape: tuple[int, int]
    run: np.ndarray
    image: np.ndarray
    layer: np.ndarray
    head: np.ndarray
    xy: np.ndarray
    cluster: np.ndarray
    latent: np.ndarray
    representative: np.ndarray
    decoded_centre: np.ndarray
    centres: np.ndarray

    @property
    def k(self) -> int:
        return len(self.centres)

    def _heads(self, run: int, values: np.ndarray, dims) -> np.ndarray:
        """``[L, H, ...]`` the mean of ``values`` ``[M, ...]`` over each head's patterns."""
        L, H = dims
        mine = self.run == run
        flat = self.layer[mine] * H + self.head[mine]
        v = np.asarray(values[mine], np.float64).reshape(int(mine.sum()), -1)
        sums = np.zeros((L * H, v.shape[1]))
        np.add.at(sums, flat, v)
        counts = np.bincount(flat, minlength=L * H)[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = sums / np.where(counts > 0, counts, np.nan)
        return mean.reshape(L, H, *np.shape(values)[1:])

    def head_positions(self, run: int, dims) -> np.ndarray:
        """``[L, H, 2]`` each head's mean 2-D position (NaN: no pattern)."""
        return self._heads(run, self.xy, dims)

    def head_latents(self, run: int, dims) -> np.ndarray:
        """``[L, H, d]`` each head's mean latent (NaN: no pattern)."""
        return self._heads(run, self.latent, dims)

    def head_clusters(self, run: int, dims) -> np.ndarray:
        """``[L, H]`` each head's most common cluster over its images (ties: the lowest; -1: a
        head without patterns)."""
        L, H = dims
        mine = self.run == run
        counts = np.zeros((L * H, self.k), np.int64)
        np.add.at(counts, (self.layer[mine] * H + self.head[mine], self.cluster[mine]), 1)
        return np.where(counts.any(1), counts.argmax(1), -1).reshape(L, H).astype(np.int32)


@dataclasses.dataclass(kw_only=True, repr=False)
class SharedPatternSpace(Summarized):
    """The runs' heads in one pattern space per kind (see the module's docstring).

    Attributes:
      names: the runs' names.
      dims: per run, ``(L, H)``.
      image_ids: per run, the ids of the images its patterns came from, in the order used
        (``SharedKind.image`` indexes these).
      grid: the common patch grid.
      kinds: ``{kind: SharedKind}`` for each kind some run has.
      missing: ``{kind: [names]}`` the runs left out of a kind, and ``{"attention": [names]}``
        the runs without stored attention.
      notes: what else is left out, in words (a kind with too few patterns to train on).
      settings: the :class:`SharedPatternSettings` used.
      reused: True when read back from a stored space instead of computed.
      directory: where it is stored (None: nowhere).
    """

    names: list[str]
    dims: list[tuple[int, int]]
    image_ids: list[list[str]]
    grid: tuple[int, int]
    kinds: dict[str, SharedKind]
    missing: dict[str, list[str]]
    notes: list[str]
    settings: SharedPatternSettings
    reused: bool = False
    directory: str | None = None

    def _summary(self):
        rows = [
            (
                kind,
                f"{len(s.cluster):,} patterns of {listed(self.names[r] for r in s.runs)} in "
                f"{s.k} clusters",
            )
            for kind, s in self.kinds.items()
        ]
        for what, names in self.missing.items():
            rows.append((f"no {what}", listed(names)))
        rows.extend(("note", n) for n in self.notes)
        title = f"shared pattern space of {len(self.names)} runs on a {self.grid[0]}x{self.grid[1]} grid"
        return title + (" (reused)" if self.reused else ""), rows

    def head_clusters(self, kind: str) -> list[np.ndarray]:
        """Per run of ``kind``'s space, ``[L, H]`` each head's most common cluster."""
        s = self.kinds[kind]
        return [s.head_clusters(r, self.dims[r]) for r in s.runs]

    def table(self, kind: str) -> list[np.ndarray]:
        """Per run of ``kind``'s space, ``[k, L]`` heads per cluster and layer (:func:`kind_table`)."""
        return kind_table(self.head_clusters(kind), self.kinds[kind].k)

    def depths(self, kind: str) -> list[np.ndarray]:
        """Per run of ``kind``'s space, ``[L]`` each layer's relative depth."""
        return [relative_depth(self.dims[r][0]) for r in self.kinds[kind].runs]

    def nearest(self, kind: str) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
        """:func:`nearest_heads` of ``kind``'s runs, keyed by run index into :attr:`names`."""
        s = self.kinds[kind]
        latents = [s.head_latents(r, self.dims[r]) for r in s.runs]
        found = nearest_heads(latents, self.settings.neighbours)
        return {(s.runs[a], s.runs[b]): v for (a, b), v in found.items()}


# --- orchestration ------------------------------------------------------------------------------


def _grid(config: dict[str, Any]) -> tuple[int, int]:
    return (
        config["image_size"][0] // config["patch_size"][0],
        config["image_size"][1] // config["patch_size"][1],
    )


def _attention_ids(bundle: ResultsBundle) -> list[str]:
    ids = bundle.meta["image_ids"]
    return [ids[int(i)] for i in bundle["attention"]["image_index"]]


def _run_identity(name: str, bundle: ResultsBundle, rows: np.ndarray) -> dict[str, Any]:
    """What the stored space depends on of one run (see the module's docstring)."""
    config = bundle.meta["config"]
    stored = bundle["attention"]
    digest = hashlib.sha256()
    for r in rows:
        digest.update(np.ascontiguousarray(stored["steps"][int(r)]).tobytes())
    ids = _attention_ids(bundle)
    return {
        "name": name,
        "checkpoint": bundle.meta.get("checkpoint"),
        "dims": [config["num_layers"], config["num_heads"]],
        "grid": list(_grid(config)),
        "special": list(special_tokens(config)),
        "attention_code": bundle.attention_code,
        "image_ids": [ids[int(r)] for r in rows],
        "steps_sha256": digest.hexdigest(),
    }


def _run_patterns(
    bundle: ResultsBundle, rows: np.ndarray, kinds: Sequence[str], shape_of, grid_patches: int
) -> dict[str, np.ndarray]:
    """``{kind: [image, L, H, h, w]}`` one run's patterns on the common grid, normalised; the
    attention is decoded a few images at a time."""
    config = bundle.meta["config"]
    has_cls, prefix = special_tokens(config)
    grid = _grid(config)
    L, H = config["num_layers"], config["num_heads"]
    N = grid[0] * grid[1] + prefix
    stored, code = bundle["attention"], bundle.attention_code
    step = max(1, DECODE_BYTES // (L * H * N * N * 8))
    out: dict[str, list[np.ndarray]] = {kind: [] for kind in kinds}
    for start in range(0, len(rows), step):
        index = np.asarray(rows[start : start + step])
        attention = jnp.asarray(decode_stored(stored, code, index))
        for kind in kinds:
            # The stored codes round each weight (attention_codes' bounds), so their rows need
            # not sum to 1 within check_attention's tolerance; the analysis checked the model's.
            raw = extract_patterns(
                attention, grid, has_cls, kind, check=False, num_prefix_tokens=prefix
            )
            scaled = common_scale(raw, grid[0] * grid[1], shape_of(kind), grid_patches)
            out[kind].append(np.asarray(scaled, np.float32))
    return {kind: np.concatenate(v) for kind, v in out.items()}


def shared_pattern_space(
    bundles: Sequence[ResultsBundle],
    names: Sequence[str],
    settings: SharedPatternSettings | None = None,
    *,
    workdir: str | Path | None = None,
    mesh=None,
    progress: ProgressArg = True,
    note: Callable[[str], None] | None = None,
) -> SharedPatternSpace:
    """Compute the shared pattern space of ``bundles`` (see the module's docstring).

    Args:
      bundles: the runs, validated.
      names: their names.
      settings: how; default :class:`SharedPatternSettings`.
      workdir: where the kinds' autoencoders keep their checkpoints (reused when their patterns
        and settings match); None keeps none.
      mesh: trains and encodes data-parallel over its devices.
      progress: as :func:`~jaxvit_interp.progress.start_progress`.
      note: told a line of what is left out (a kind with too few patterns).

    A run without stored attention, and a run without CLS for the ``"cls"`` kind, is left out of
    that kind and listed in :attr:`SharedPatternSpace.missing`.
    """
    settings = settings or SharedPatternSettings()
    names = list(names)
    dims = [(b.meta["config"]["num_layers"], b.meta["config"]["num_heads"]) for b in bundles]
    with_attention = [
        i
        for i, b in enumerate(bundles)
        if "attention" in b.parts and len(b["attention"]["image_index"])
    ]
    missing: dict[str, list[str]] = {}
    if len(with_attention) < len(bundles):
        missing["attention"] = [n for i, n in enumerate(names) if i not in with_attention]
    grids = [_grid(bundles[i].meta["config"]) for i in with_attention]
    grid = (
        tuple(settings.grid) if settings.grid else min(grids or [(1, 1)], key=lambda g: g[0] * g[1])
    )
    common_patches = grid[0] * grid[1]
    rows = (
        choose_attention_rows(
            [_attention_ids(bundles[i]) for i in with_attention], settings.images_per_run
        )
        if with_attention
        else []
    )
    image_ids = [[] for _ in bundles]
    for i, r in zip(with_attention, rows):
        ids = _attention_ids(bundles[i])
        image_ids[i] = [ids[int(x)] for x in r]

    members = {
        kind: [
            i
            for i in with_attention
            if kind != "cls" or special_tokens(bundles[i].meta["config"])[0]
        ]
        for kind in settings.kinds
    }
    for kind, runs in members.items():
        left = [names[i] for i in with_attention if i not in runs]
        if left:
            missing[kind] = left
    patterns: dict[str, dict[int, np.ndarray]] = {kind: {} for kind in settings.kinds}
    bar = start_progress(progress, total=len(with_attention), desc="shared patterns: decoding")
    for i, r in zip(with_attention, rows):
        kinds = [k for k in settings.kinds if i in members[k]]
        got = _run_patterns(bundles[i], r, kinds, lambda k: pattern_shape(k, grid), common_patches)
        for kind, value in got.items():
            patterns[kind][i] = value
        bar.update(1)
    bar.close()

    spaces, notes = {}, []
    for kind in settings.kinds:
        runs = members[kind]
        if not runs:
            continue
        total = sum(patterns[kind][i][..., 0, 0].size for i in runs)
        if total < MIN_PATTERNS:
            notes.append(
                f"{kind} patterns: {total} are too few to train the autoencoder on (it needs "
                f"{MIN_PATTERNS}); more attention images per run would give more"
            )
            if note:
                note(f"shared pattern space: {notes[-1]}")
            continue
        spaces[kind] = _embed_kind(
            kind, runs, [patterns[kind][i] for i in runs], settings, workdir, mesh, progress
        )
    return SharedPatternSpace(
        names=names,
        dims=dims,
        image_ids=image_ids,
        grid=grid,
        kinds=spaces,
        missing=missing,
        notes=notes,
        settings=settings,
    )


def _embed_kind(kind, runs, patterns, settings, workdir, mesh, progress) -> SharedKind:
    """Train one autoencoder on every run's patterns of ``kind`` and embed them all."""
    from jaxvit_interp.pipeline.subsets import subset

    index = []
    for run, p in zip(runs, patterns):
        image, layer, head = np.meshgrid(*map(np.arange, p.shape[:3]), indexing="ij")
        index.append(
            np.stack([np.full(image.size, run), image.ravel(), layer.ravel(), head.ravel()], 1)
        )
    index = np.concatenate(index)
    flat = np.concatenate([p.reshape(-1, *p.shape[-2:]) for p in patterns])
    pick = subset(len(flat), settings.pattern_samples, settings.seed)
    with start_progress(progress, total=1, desc=f"shared patterns: the {kind} autoencoder") as bar:
        model = train_autoencoder(
            flat[pick],
            settings.autoencoder,
            workdir=None if workdir is None else Path(workdir) / f"autoencoder-{kind}",
            mesh=mesh,
            progress=bar.share(1),
        )
    latents = model.encode(flat, mesh=mesh)
    emb = embed_latents(
        model,
        latents,
        lambda i: flat[i],
        projection=settings.projection,
        k=None if settings.clusters is None else min(settings.clusters, len(flat)),
        seed=settings.seed,
    )
    return SharedKind(
        kind=kind,
        runs=list(runs),
        shape=tuple(flat.shape[-2:]),
        run=index[:, 0].astype(np.int32),
        image=index[:, 1].astype(np.int32),
        layer=index[:, 2].astype(np.int32),
        head=index[:, 3].astype(np.int32),
        xy=np.asarray(emb.xy, np.float32),
        cluster=emb.labels.astype(np.int32),
        latent=np.asarray(emb.latents, np.float32),
        representative=emb.representative,
        decoded_centre=np.asarray(emb.decoded_centre, np.float32),
        centres=np.asarray(emb.centres, np.float32),
    )


# --- storage ------------------------------------------------------------------------------------

_KIND_ARRAYS = (
    "run",
    "image",
    "layer",
    "head",
    "xy",
    "cluster",
    "latent",
    "representative",
    "decoded_centre",
    "centres",
)


def _key(identities: list[dict], settings: SharedPatternSettings) -> dict[str, Any]:
    """What a stored space must have been computed for, as its JSON reads back (lists, not
    tuples)."""
    key = {"format": SHARED_FORMAT, "settings": settings.to_dict(), "runs": identities}
    return json.loads(json.dumps(key))


def save_shared_space(
    space: SharedPatternSpace, directory: str | Path, identities: list[dict]
) -> Path:
    """Write ``space`` to ``directory`` (``<kind>.npz`` then ``shared.json``, last, so a half
    written space has no index that reads as valid)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for kind, s in space.kinds.items():
        save_npz(directory / f"{kind}.npz", {n: getattr(s, n) for n in _KIND_ARRAYS})
    index = {
        **_key(identities, space.settings),
        "grid": list(space.grid),
        "dims": [list(d) for d in space.dims],
        "image_ids": space.image_ids,
        "missing": space.missing,
        "notes": space.notes,
        "kinds": {
            kind: {"runs": s.runs, "shape": list(s.shape), "k": s.k, "patterns": len(s.run)}
            for kind, s in space.kinds.items()
        },
    }
    write_text(directory / SHARED_INDEX, json.dumps(index, indent=1))
    return directory


def _check(condition: bool, path: Path, what: str) -> None:
    if not condition:
        raise InputError(f"stored shared pattern space {path}: {what}")


def load_shared_space(
    directory: str | Path,
    names: Sequence[str],
    identities: list[dict],
    settings: SharedPatternSettings,
) -> SharedPatternSpace | None:
    """The space stored in ``directory`` for these runs and settings; None when there is none
    or it was computed for other runs or settings. Raises :class:`InputError` naming the file
    when the stored files do not hold what their index says."""
    directory = Path(directory)
    index_path = directory / SHARED_INDEX
    if not index_path.is_file():
        return None
    try:
        index = json.loads(index_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(
            f"stored shared pattern space {index_path} is not valid JSON: {err}"
        ) from None
    _check(isinstance(index, dict), index_path, "not a JSON object")
    if {k: index.get(k) for k in ("format", "settings", "runs")} != _key(identities, settings):
        return None
    dims = [tuple(d) for d in index["dims"]]
    kinds = {}
    for kind, info in index["kinds"].items():
        path = directory / f"{kind}.npz"
        _check(kind in PATTERN_KINDS and path.is_file(), path, f"kind {kind!r} has no arrays")
        arrays = load_npz(path, what=f"shared pattern space kind {kind!r}")
        _check(
            set(_KIND_ARRAYS) <= set(arrays),
            path,
            f"lacks {sorted(set(_KIND_ARRAYS) - set(arrays))}",
        )
        M, k, shape = info["patterns"], info["k"], tuple(info["shape"])
        d = arrays["latent"].shape[-1] if arrays["latent"].ndim == 2 else -1
        want = {
            "run": (M,),
            "image": (M,),
            "layer": (M,),
            "head": (M,),
            "cluster": (M,),
            "xy": (M, 2),
            "latent": (M, d),
            "representative": (k, *shape),
            "decoded_centre": (k, *shape),
            "centres": (k, d),
        }
        for name, expected in want.items():
            _check(
                arrays[name].shape == expected,
                path,
                f"{name} has shape {arrays[name].shape}, expected {expected}",
            )
        runs = [int(r) for r in info["runs"]]
        _check(set(np.unique(arrays["run"]).tolist()) <= set(runs), path, "run out of range")
        for r in runs:
            mine = arrays["run"] == r
            L, H = dims[r]
            _check(
                arrays["layer"][mine].max(initial=0) < L
                and arrays["head"][mine].max(initial=0) < H,
                path,
                f"a layer or head outside run {names[r]}'s {L}x{H}",
            )
        _check(
            arrays["cluster"].min(initial=0) >= 0 and arrays["cluster"].max(initial=0) < k,
            path,
            "a cluster outside 0 .. k-1",
        )
        kinds[kind] = SharedKind(kind=kind, runs=runs, shape=shape, **arrays)
    return SharedPatternSpace(
        names=list(names),
        dims=dims,
        image_ids=index["image_ids"],
        grid=tuple(index["grid"]),
        kinds=kinds,
        missing={k: list(v) for k, v in index["missing"].items()},
        notes=list(index["notes"]),
        settings=settings,
        reused=True,
        directory=str(directory),
    )


def run_identities(
    bundles: Sequence[ResultsBundle], names: Sequence[str], settings: SharedPatternSettings
) -> list[dict]:
    """Each run's identity (see the module's docstring) under ``settings``."""
    with_attention = [
        i
        for i, b in enumerate(bundles)
        if "attention" in b.parts and len(b["attention"]["image_index"])
    ]
    rows = (
        choose_attention_rows(
            [_attention_ids(bundles[i]) for i in with_attention], settings.images_per_run
        )
        if with_attention
        else []
    )
    chosen = dict(zip(with_attention, rows))
    out = []
    for i, (name, bundle) in enumerate(zip(names, bundles)):
        if i in chosen:
            out.append(_run_identity(name, bundle, chosen[i]))
        else:
            out.append(
                {"name": name, "checkpoint": bundle.meta.get("checkpoint"), "attention": None}
            )
    return out


def load_or_compute(
    bundles: Sequence[ResultsBundle],
    names: Sequence[str],
    directory: str | Path,
    settings: SharedPatternSettings | None = None,
    *,
    mesh=None,
    progress: ProgressArg = True,
    note: Callable[[str], None] | None = None,
) -> SharedPatternSpace:
    """The shared space of these runs stored in ``directory`` when it was computed for the same
    runs and settings (``reused=True``), else computed (its autoencoders' checkpoints kept in
    ``directory`` too) and stored there. A stored space that cannot be read is computed again,
    and ``note`` says so."""
    settings = settings or SharedPatternSettings()
    directory = Path(directory)
    identities = run_identities(bundles, names, settings)
    try:
        stored = load_shared_space(directory, names, identities, settings)
    except (InputError, OSError, KeyError, TypeError, ValueError) as err:
        if note:
            note(f"the stored shared pattern space cannot be read ({err}); computing it again")
        stored = None
    if stored is not None:
        if note:
            note(f"shared pattern space reused from {directory}")
        return stored
    space = shared_pattern_space(
        bundles, names, settings, workdir=directory, mesh=mesh, progress=progress, note=note
    )
    # The old index goes first: a space half replaced never reads as the new one.
    (directory / SHARED_INDEX).unlink(missing_ok=True)
    save_shared_space(space, directory, identities)
    space.directory = str(directory)
    if note:
        note(f"shared pattern space computed and stored in {directory}")
    return space
