"""Training the pattern autoencoder: optax, a held-out split, early stopping, orbax checkpoints.

:func:`train_autoencoder` is the entry point. Given a device mesh it trains data-parallel: each
step's batch is split along its pattern axis over the mesh's devices (every device of every
process), the parameters and optimiser state are replicated, and XLA reduces the gradients
across the devices; the result equals one device's to float32 rounding. Given a ``workdir`` it saves the trained model there
with orbax and, called again with the same patterns and settings (same fingerprint), restores it
instead of training again; different patterns or settings retrain and overwrite it.

Checkpoint layout (an orbax composite checkpoint in ``workdir``)::

    params/   the autoencoder's parameters (orbax StandardSave)
    split/    {"heldout_index": [held-out]} indices of the held-out patterns
    meta/     JSON: format, fingerprint, settings, pattern shape, loss history, best epoch
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxvit_interp.errors import InputError
from jaxvit_interp.parallel import Batcher, to_host
from jaxvit_interp.patterns.autoencoder import PatternAutoencoder
from jaxvit_interp.progress import ProgressArg, start_progress
from jaxvit_interp.setting import check_fields, from_table, setting
from jaxvit_interp.storage import orbax_write
from jaxvit_interp.summary import Summarized, listed, number

Array = jax.Array

# Fewer patterns than this cannot give a held-out split big enough to stop on.
MIN_PATTERNS = 32
# Default cap on optimiser steps (see AutoencoderSettings.max_steps).
MAX_STEPS = 2000
# Bumped when the checkpoint layout or the training procedure changes meaning.
CHECKPOINT_FORMAT = "jaxvit_interp.patterns.autoencoder/1"


@dataclasses.dataclass(frozen=True, kw_only=True)
class AutoencoderSettings:
    """How the pattern autoencoder is built and trained.

    Attributes:
      latent_dim: width of the latent.
      features: channels of the stride-2 convolutions, outermost first.
      learning_rate: Adam step size.
      batch_size: patterns per step (capped at the training set's size).
      max_epochs: most passes over the training patterns.
      max_steps: most optimiser steps in all (None: no such cap); training stops after the
        epoch that reaches it. Epochs grow with the patterns sampled while a step's cost grows
        with the pattern's size, so this cap is what keeps a large model's training (144,000
        patterns of 27x27 for ViT-B/16 over 1,000 images) to minutes, while small runs stop on
        ``max_epochs`` or the held-out loss first.
      patience: epochs without a held-out improvement before stopping; the parameters of the best
        held-out epoch are kept.
      min_delta: how much the held-out loss must fall to count as an improvement.
      heldout_fraction: share of the patterns held out (chosen at random with ``seed``).
      seed: seeds initialisation, the split and the shuffling.
    """

    latent_dim: int = setting(12, "width of the latent", least=1)
    features: tuple[int, ...] = setting(
        (16, 32), "channels of the stride-2 convolutions, outermost first", least=1, many=True
    )
    learning_rate: float = setting(2e-3, "Adam step size", type=float, more_than=0)
    batch_size: int = setting(128, "patterns per step", least=1)
    max_epochs: int = setting(200, "most passes over the training patterns", least=1)
    max_steps: int | None = setting(
        MAX_STEPS, "most optimiser steps in all", least=1, none="no such cap"
    )
    patience: int = setting(10, "epochs without a held-out improvement before stopping", least=1)
    min_delta: float = setting(
        0.0, "how much the held-out loss must fall to count as an improvement", type=float, least=0
    )
    heldout_fraction: float = setting(
        0.2, "share of the patterns held out", type=float, more_than=0, less_than=1
    )
    seed: int = setting(0, "seeds initialisation, the split and the shuffling", least=0)

    def __post_init__(self):
        check_fields(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], prefix: str = "") -> AutoencoderSettings:
        """The settings from a table of some of the fields, as
        :meth:`~jaxvit_interp.pipeline.settings.AnalysisSettings.from_dict`."""
        return from_table(cls, d, prefix)


@dataclasses.dataclass(kw_only=True, repr=False)
class TrainedAutoencoder(Summarized):
    """A trained pattern autoencoder and how it was trained.

    Attributes:
      settings: the :class:`AutoencoderSettings` it was trained with.
      shape: ``(h, w)`` of the patterns it takes.
      params: the Flax parameter tree.
      train_loss: mean squared error on the training patterns, one per epoch run.
      heldout_loss: mean squared error on the held-out patterns, one per epoch run.
      best_epoch: the epoch (0-based) whose parameters were kept.
      heldout_index: ``[held-out]`` indices (into the flattened patterns) of the held-out set.
      fingerprint: hash of the patterns and settings it was trained on.
      reused: True when this came from a checkpoint instead of training.
    """

    settings: AutoencoderSettings
    shape: tuple[int, int]
    params: Any
    train_loss: list[float]
    heldout_loss: list[float]
    best_epoch: int
    heldout_index: np.ndarray
    fingerprint: str
    reused: bool = False

    def _summary(self):
        s = self.settings
        epochs = len(self.heldout_loss)
        rows = [
            ("shape", f"{self.shape[0]}x{self.shape[1]} patterns -> {s.latent_dim} latents"),
            (
                "held-out loss",
                f"{number(self.heldout_loss[self.best_epoch])} at epoch {self.best_epoch} of "
                f"{epochs} (first {number(self.heldout_loss[0])})"
                if epochs
                else "none",
            ),
            ("held out", f"{len(self.heldout_index):,} patterns"),
            ("fingerprint", self.fingerprint[:12] + (" (restored)" if self.reused else "")),
        ]
        return f"pattern autoencoder, features {listed(s.features)}", rows

    @property
    def module(self) -> PatternAutoencoder:
        return _module(self.shape, self.settings.latent_dim, self.settings.features)

    def encode(self, patterns, batch_size: int = 8192, mesh: Mesh | None = None) -> np.ndarray:
        """Latents ``[..., latent]`` of normalised patterns ``[..., h, w]``; each batch split over
        the devices of ``mesh`` (None: the default device)."""
        x = _as_patterns(patterns, self.shape)
        flat = x.reshape(-1, *self.shape)
        z = _batched(_encode, self.module, self.params, flat, batch_size, mesh)
        return z.reshape(*x.shape[:-2], z.shape[-1])

    def decode(self, latents, batch_size: int = 8192) -> np.ndarray:
        """Patterns ``[..., h, w]`` decoded from latents ``[..., latent]``."""
        z = np.asarray(latents, np.float32)
        if z.shape[-1:] != (self.settings.latent_dim,):
            raise InputError(
                f"latents have shape {tuple(z.shape)}; expected [..., {self.settings.latent_dim}]"
            )
        flat = z.reshape(-1, z.shape[-1])
        out = _batched(_decode, self.module, self.params, flat, batch_size)
        return out.reshape(*z.shape[:-1], *self.shape)

    def reconstruction_error(self, patterns, batch_size: int = 8192) -> np.ndarray:
        """Mean squared reconstruction error per pattern, ``[...]`` for patterns ``[..., h, w]``."""
        x = _as_patterns(patterns, self.shape)
        flat = x.reshape(-1, *self.shape)
        err = _batched(_pattern_mse, self.module, self.params, flat, batch_size)
        return err.reshape(x.shape[:-2])


@functools.cache
def _module(shape, latent_dim, features) -> PatternAutoencoder:
    return PatternAutoencoder(shape=tuple(shape), latent_dim=latent_dim, features=tuple(features))


@functools.partial(jax.jit, static_argnums=0)
def _encode(module, params, x):
    return module.apply({"params": params}, x, method="encode")


@functools.partial(jax.jit, static_argnums=0)
def _decode(module, params, z):
    return module.apply({"params": params}, z, method="decode")


@functools.partial(jax.jit, static_argnums=0)
def _pattern_mse(module, params, x):
    recon, _ = module.apply({"params": params}, x)
    return jnp.mean((recon - x) ** 2, axis=(-2, -1))


def _as_patterns(patterns, shape) -> np.ndarray:
    x = np.asarray(patterns, np.float32)
    if x.ndim < 2 or tuple(x.shape[-2:]) != tuple(shape):
        raise InputError(
            f"patterns have shape {tuple(x.shape)}; this autoencoder takes [..., {shape[0]}, "
            f"{shape[1]}]"
        )
    return x


def _batched(
    fn, module, params, flat: np.ndarray, batch_size: int, mesh: Mesh | None = None
) -> np.ndarray:
    """``fn(module, params, rows)`` over the rows of ``flat`` ``[M, ...]`` in batches, concatenated
    back to ``[M, ...]``.

    Batches are as even as they can be (a ragged last one is zero-padded by the
    :class:`~jaxvit_interp.parallel.Batcher`), so every batch reuses one compilation and little
    work is padding; each is split over the devices of ``mesh``.
    """
    count = -(-len(flat) // batch_size)
    batcher = Batcher(-(-len(flat) // count), mesh)
    params = batcher.replicate(params)
    return batcher.map(functools.partial(fn, module, params), flat)


def _param_shapes(module: PatternAutoencoder):
    """The parameter tree of ``module`` as ``ShapeDtypeStruct`` leaves (traced, never run)."""
    x = jax.ShapeDtypeStruct((1, *module.shape), jnp.float32)
    return jax.eval_shape(lambda x: module.init(jax.random.key(0), x)["params"], x)


def _init_params(module: PatternAutoencoder, seed: int):
    """LeCun-normal kernels and zero biases (Flax's defaults for Conv, ConvTranspose and Dense).

    Drawn with NumPy's seeded generator rather than ``module.init``: compiling the random
    initialisers costs seconds on a CPU, many times the cost of a small training run's first epoch.
    """
    rng = np.random.default_rng(seed)

    def init(path, leaf):
        if path[-1].key == "bias":
            return np.zeros(leaf.shape, np.float32)
        fan_in = int(np.prod(leaf.shape[:-1]))  # kernels are [..., in, out]
        return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(init, _param_shapes(module))


def _reconstruction_loss(module, params, x):
    recon, _ = module.apply({"params": params}, x)
    return jnp.mean((recon - x) ** 2)


@functools.cache
def _steps(module: PatternAutoencoder, learning_rate: float, batch_sharding=None):
    """Jitted ``(init_opt, step)`` for one architecture, step size and batch layout (cached).

    ``step(params, opt_state, x_train, idx)`` trains on the patterns ``x_train[idx]`` and returns
    the new parameters, optimiser state and the step's loss. The epoch loop stays in Python: on
    XLA's CPU backend the convolutions inside a ``lax.scan`` over the steps ran about four times
    slower than the same steps dispatched one by one (27x27 patterns, 2 cores), and a step is long
    enough (tens of milliseconds) that dispatching it costs little.

    ``batch_sharding``: where each step's batch lives (split over a mesh's devices along the
    pattern axis), or None for wherever ``x_train`` is.
    """
    tx = optax.adam(learning_rate)
    grad_fn = jax.value_and_grad(functools.partial(_reconstruction_loss, module))

    @jax.jit
    def step(params, opt_state, x_train, idx):
        batch = x_train[idx]
        if batch_sharding is not None:
            # Each device takes its share of the batch; the parameters are replicated, so
            # XLA sums the gradients across devices (an all-reduce) before the update.
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        loss, grads = grad_fn(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return tx.init, step


def fingerprint(patterns: np.ndarray, settings: AutoencoderSettings) -> str:
    """SHA-256 of the patterns (shape, dtype, bytes), the settings and the checkpoint format."""
    h = hashlib.sha256()
    head = {
        "format": CHECKPOINT_FORMAT,
        "shape": list(patterns.shape),
        "dtype": str(patterns.dtype),
        "settings": settings.to_dict(),
    }
    h.update(json.dumps(head, sort_keys=True).encode())
    h.update(np.ascontiguousarray(patterns).tobytes())
    return h.hexdigest()


def _check_training_patterns(patterns, settings: AutoencoderSettings) -> np.ndarray:
    x = np.asarray(patterns, np.float32)
    if x.ndim < 3:
        raise InputError(
            f"patterns have shape {tuple(x.shape)}; expected [..., h, w] with at least one "
            f"leading (pattern) axis"
        )
    x = x.reshape(-1, *x.shape[-2:])
    bad = ~np.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), x.shape))
        raise InputError(
            f"patterns contain {int(bad.sum())} NaN or infinite value(s), first at flattened "
            f"index {first}"
        )
    n = len(x)
    heldout = int(round(settings.heldout_fraction * n))
    if n < MIN_PATTERNS or heldout < 1 or heldout >= n:
        raise InputError(
            f"{n} patterns are too few to train the pattern autoencoder: it needs at least "
            f"{MIN_PATTERNS}, with a held-out share of {settings.heldout_fraction:g} leaving "
            f"patterns on both sides of the split (got {heldout} held out)"
        )
    return x


def train_autoencoder(
    patterns,
    settings: AutoencoderSettings | None = None,
    *,
    workdir: str | pathlib.Path | None = None,
    mesh: Mesh | None = None,
    progress: ProgressArg = True,
) -> TrainedAutoencoder:
    """Train a :class:`PatternAutoencoder` on normalised ``patterns`` ``[..., h, w]``.

    The leading axes (e.g. ``image layer head``) are flattened into one pattern axis; a random
    ``settings.heldout_fraction`` of it is held out. Each epoch shuffles the training patterns
    (ragged tail left to the next epoch's shuffle), and training stops after
    ``settings.patience`` epochs without the held-out loss falling by ``settings.min_delta``,
    keeping the best held-out epoch's parameters. Everything random follows ``settings.seed``.

    With ``workdir``, a checkpoint there whose fingerprint (patterns + settings) matches is
    restored instead of training (``reused=True``); otherwise the new model is saved there,
    replacing whatever was there.

    With ``mesh``, training is data-parallel over its devices (see the module's docstring); a
    batch that does not split evenly over them is computed whole on each. Across processes,
    every process calls this with the same patterns.

    Raises:
      ValueError: patterns with NaN/inf, or too few to train and hold out from (fewer than
        :data:`MIN_PATTERNS`).
      FloatingPointError: the held-out loss never became a finite number (training diverged).
    """
    settings = settings or AutoencoderSettings()
    x = _check_training_patterns(patterns, settings)
    fp = fingerprint(x, settings)
    if workdir is not None and _saved_fingerprint(workdir) == fp:
        return restore_autoencoder(workdir)

    n = len(x)
    shape = tuple(int(s) for s in x.shape[1:])
    rng = np.random.default_rng(settings.seed)
    perm = rng.permutation(n)
    n_held = int(round(settings.heldout_fraction * n))
    held_index, train_index = np.sort(perm[:n_held]), perm[n_held:]
    x_held = x[held_index]
    batch = min(settings.batch_size, len(train_index))
    steps_per_epoch = len(train_index) // batch
    epochs = settings.max_epochs
    if settings.max_steps is not None:
        epochs = min(epochs, -(-settings.max_steps // steps_per_epoch))

    module = _module(shape, settings.latent_dim, settings.features)
    # Everything but the batches is replicated over the mesh's devices.
    place = Batcher(1, mesh).replicate
    split = mesh is not None and mesh.size > 1 and batch % mesh.size == 0
    batch_sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names)) if split else None
    x_train = place(x[train_index])
    params = place(_init_params(module, settings.seed))
    init_opt, step = _steps(module, settings.learning_rate, batch_sharding)
    opt_state = init_opt(params)

    best = (np.inf, params, -1)
    train_hist, held_hist = [], []
    bar = start_progress(
        progress, total=epochs, desc="pattern autoencoder", unit="epoch", leave=False
    )
    for e in range(epochs):
        order = rng.permutation(len(train_index))[: steps_per_epoch * batch]
        losses = []
        for idx in order.reshape(steps_per_epoch, batch):
            params, opt_state, loss = step(params, opt_state, x_train, place(idx))
            losses.append(loss)
        loss = float(to_host(jnp.stack(losses).mean()))
        held = float(_batched(_pattern_mse, module, params, x_held, 8192, mesh).mean())
        train_hist.append(loss)
        held_hist.append(held)
        if held < best[0] - settings.min_delta:
            best = (held, params, e)
        bar.note(train=f"{loss:.3g}", heldout=f"{held:.3g}", best=best[2])
        bar.update(1)
        if e - best[2] >= settings.patience:
            break
    bar.close()
    if best[2] < 0:
        raise InputError(
            f"pattern autoencoder training diverged: held-out loss {held_hist[0]} after the first "
            f"epoch; try a smaller learning_rate than {settings.learning_rate}"
        )

    result = TrainedAutoencoder(
        settings=settings,
        shape=shape,
        params=jax.tree.map(to_host, best[1]),
        train_loss=train_hist,
        heldout_loss=held_hist,
        best_epoch=best[2],
        heldout_index=held_index,
        fingerprint=fp,
    )
    if workdir is not None:
        save_autoencoder(result, workdir)
    return result


def _checkpointer() -> ocp.Checkpointer:
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def _saved_fingerprint(workdir) -> str | None:
    """The fingerprint stored in ``workdir``, or None when there is no readable checkpoint."""
    path = pathlib.Path(workdir).resolve()
    if not (path / "meta").is_dir():
        return None
    try:
        with _checkpointer() as ckpt:
            meta = ckpt.restore(path, ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except (OSError, ValueError, KeyError):
        return None
    return meta.get("fingerprint") if meta.get("format") == CHECKPOINT_FORMAT else None


def save_autoencoder(model: TrainedAutoencoder, workdir: str | pathlib.Path) -> pathlib.Path:
    """Save ``model`` to ``workdir`` (an orbax composite checkpoint), replacing what is there."""
    path = pathlib.Path(workdir).resolve()
    meta = {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": model.fingerprint,
        "settings": model.settings.to_dict(),
        "shape": list(model.shape),
        "train_loss": model.train_loss,
        "heldout_loss": model.heldout_loss,
        "best_epoch": model.best_epoch,
    }
    split = {"heldout_index": np.asarray(model.heldout_index, np.int64)}
    array_bytes = sum(np.asarray(a).nbytes for a in jax.tree.leaves((model.params, split)))
    with orbax_write(path, array_bytes), _checkpointer() as ckpt:
        ckpt.save(
            path,
            ocp.args.Composite(
                params=ocp.args.StandardSave(model.params),
                split=ocp.args.StandardSave(split),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )
    return path


def restore_autoencoder(workdir: str | pathlib.Path) -> TrainedAutoencoder:
    """Load a model saved by :func:`save_autoencoder` (``reused=True`` on the result)."""
    path = pathlib.Path(workdir).resolve()
    if not (path / "meta").is_dir() or not (path / "params").is_dir():
        raise FileNotFoundError(
            f"no pattern autoencoder checkpoint in {path} (no meta/ or params/)"
        )
    with _checkpointer() as ckpt:
        meta = ckpt.restore(path, ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise InputError(
                f"checkpoint in {path} has format {meta.get('format')!r}; this version reads "
                f"{CHECKPOINT_FORMAT!r}"
            )
        settings = AutoencoderSettings.from_dict(meta["settings"])
        shape = tuple(meta["shape"])
        # Restore onto the architecture's own tree so shapes and dtypes are checked.
        module = _module(shape, settings.latent_dim, settings.features)
        target = _param_shapes(module)
        restored = ckpt.restore(
            path,
            ocp.args.Composite(
                params=ocp.args.StandardRestore(target), split=ocp.args.StandardRestore()
            ),
        )
    return TrainedAutoencoder(
        settings=settings,
        shape=shape,
        params=jax.device_get(restored["params"]),
        train_loss=list(meta["train_loss"]),
        heldout_loss=list(meta["heldout_loss"]),
        best_epoch=int(meta["best_epoch"]),
        heldout_index=np.asarray(restored["split"]["heldout_index"]),
        fingerprint=meta["fingerprint"],
        reused=True,
    )
