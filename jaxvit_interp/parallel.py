"""Images over devices: the one place that cuts images into batches, pads the last one, shards each
over the device mesh and gathers the results back to the host.

Every analysis that runs the model over many images (the ablation engines, hop strength,
patterns, attention matrices) goes through a :class:`Batcher` and its one loop,
:meth:`Batcher.run`, so the last batch compiles to the same program as the others, a batch is
split along its image axis over every device of every host (``jax.sharding.NamedSharding`` on a
1-D ``Mesh``), the next batch is copied to the devices while the previous one computes, and
progress moves as results come back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxvit_interp.errors import InputError
from jaxvit_interp.progress import ProgressArg, start_progress

__all__ = ["Batch", "Batcher", "all_devices_mesh", "to_host"]


def all_devices_mesh() -> Mesh | None:
    """A 1-D mesh over every device of every host, axis ``"batch"`` (None on a single device)."""
    if jax.device_count() == 1:
        return None
    # A plain Mesh has automatic axes: XLA propagates the image sharding through the kernels.
    return Mesh(np.array(jax.devices()), ("batch",))


def to_host(x) -> np.ndarray:
    """A result as NumPy on every process; across hosts the shards are gathered first."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.is_fully_replicated:  # every process holds all of it: no exchange needed
            return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


@dataclasses.dataclass(frozen=True)
class Batch:
    """One batch on the devices.

    Attributes:
      start: index of its first image among all images.
      valid: how many of its leading rows are real images (the rest is padding).
      arrays: the batch's arrays on the devices, each with ``Batcher.batch_size`` rows.
    """

    start: int
    valid: int
    arrays: tuple[jax.Array, ...]

    @property
    def rows(self) -> slice:
        """Where its real rows go among all images."""
        return slice(self.start, self.start + self.valid)


@dataclasses.dataclass(frozen=True)
class Batcher:
    """Batches of images over the devices of ``mesh``.

    Attributes:
      batch_size: rows per batch over all devices; rounded up to a multiple of the mesh's size.
      mesh: the devices to shard the image axis over, or None for the default device.
    """

    batch_size: int
    mesh: Mesh | None = None

    def __post_init__(self):
        if isinstance(self.batch_size, bool) or int(self.batch_size) < 1:
            raise InputError(f"batch_size must be at least 1, got {self.batch_size!r}")
        devices = 1 if self.mesh is None else self.mesh.size
        object.__setattr__(self, "batch_size", -(-int(self.batch_size) // devices) * devices)

    @property
    def num_devices(self) -> int:
        return 1 if self.mesh is None else self.mesh.size

    def put(self, rows) -> jax.Array:
        """``rows`` padded with zeros to ``batch_size`` and placed, image axis sharded."""
        rows = np.asarray(rows)
        if rows.shape[0] < self.batch_size:
            pad = np.zeros((self.batch_size - rows.shape[0], *rows.shape[1:]), rows.dtype)
            rows = np.concatenate([rows, pad])
        if self.mesh is None:
            return jnp.asarray(rows)
        spec = NamedSharding(self.mesh, PartitionSpec(self.mesh.axis_names))
        return jax.device_put(rows, spec)

    def replicate(self, tree):
        """``tree`` (parameters, tables) copied to every device of the mesh."""
        if self.mesh is None:
            return jax.tree.map(jnp.asarray, tree)
        return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec()))

    def batches(self, *arrays) -> Iterator[Batch]:
        """The batches of ``arrays`` (same length; None entries stay None)."""
        total = next(len(a) for a in arrays if a is not None)
        for start in range(0, total, self.batch_size):
            stop = min(start + self.batch_size, total)
            placed = tuple(None if a is None else self.put(a[start:stop]) for a in arrays)
            yield Batch(start, stop - start, placed)

    def run(
        self,
        fn: Callable[..., list[tuple[Callable[[Batch, Any], None], Any]]],
        *arrays,
        progress: ProgressArg = False,
        desc: str = "",
    ) -> None:
        """The one batch loop: ``fn`` over every batch of ``arrays``, its results stored on the
        host.

        ``fn(*batch_arrays)`` dispatches a batch's work and returns its parts, a list of
        ``(store, outputs)``: each ``outputs`` (a pytree of device arrays with a leading row
        axis) is gathered to NumPy, its padding dropped, and handed to ``store(batch, host)``.
        The next batch's images are placed (by :meth:`batches`) while a batch computes; its
        results are fetched before the next one starts, so one batch's work is live at a time.
        ``progress`` counts the images, a share of a batch as each of its parts comes back
        (:func:`~jaxvit_interp.progress.start_progress`).
        """
        total = next(len(a) for a in arrays if a is not None)
        bar = start_progress(progress, total=total, desc=desc, unit="img", leave=False)

        def fetch(batch, parts):
            for store, outputs in parts:
                store(batch, jax.tree.map(lambda x: to_host(x)[: batch.valid], outputs))
                bar.update(batch.valid / len(parts))

        pending = None
        for batch in self.batches(*arrays):
            if pending is not None:
                fetch(*pending)
            pending = (batch, fn(*batch.arrays))
        if pending is not None:
            fetch(*pending)
        bar.close()

    def map(
        self,
        fn: Callable[..., Any],
        *arrays,
        progress: ProgressArg = False,
        desc: str = "",
        check: Callable[[Any, Batch], None] | None = None,
        finish: Callable[[Any, Batch], Any] | None = None,
    ) -> Any:
        """``fn`` over every batch of ``arrays``; its outputs (a pytree of arrays with a leading
        row axis) gathered to NumPy, padding dropped, batches concatenated (:meth:`run`).

        ``check(host_outputs, batch)`` runs on each batch's fetched outputs (padding dropped);
        ``finish(host_outputs, batch)`` then gives what is kept of them (e.g. a compact encoding,
        or the rows of a subset), so that no more than one batch's full outputs are held.
        ``progress`` counts the images fetched (:func:`~jaxvit_interp.progress.start_progress`).
        """
        parts: list[Any] = []

        def store(batch, host):
            if check is not None:
                check(host, batch)
            parts.append(host if finish is None else finish(host, batch))

        self.run(lambda *xs: [(store, fn(*xs))], *arrays, progress=progress, desc=desc)
        return jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *parts)
