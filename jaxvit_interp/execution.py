"""How work is run: one value, :class:`Execution`, that every analysis over many images takes.

It says how big a batch may be, how much memory a device may use, which devices share the
images and how progress is told; the analyses say what is computed.  It is checked once, when
it is made, so a bad option fails at once, before any work::

    import jaxvit_interp as jvi

    quiet = jvi.Execution(progress=False)
    jvi.head_importance(config, params, images, labels, execution=quiet)
    jvi.ablate(config, params, images, sets, execution=jvi.Execution(memory_budget_bytes=2**30))

Batches are planned from it by the memory planner (:mod:`jaxvit_interp.budget`) and cut,
padded and sharded by :class:`~jaxvit_interp.parallel.Batcher`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from jax.sharding import Mesh

from jaxvit_interp.budget import default_memory_budget, params_bytes, pass_images
from jaxvit_interp.errors import InputError
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.parallel import Batcher
from jaxvit_interp.progress import ProgressArg, Share

__all__ = ["Execution", "as_execution", "check_positive"]


def check_positive(name: str, value, kind=int):
    """``value`` as a positive ``kind``, None passed through; an :class:`InputError` naming
    ``name`` otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{name} must be a positive number, got {value!r}")
    if value <= 0 or (kind is int and int(value) != value):
        raise InputError(f"{name} must be a positive {kind.__name__}, got {value!r}")
    return kind(value)


@dataclasses.dataclass(frozen=True)
class Execution:
    """How an analysis runs over its images.

    Attributes:
      batch_size: images per batch, over all devices. The ablation engines take at most this
        many (fewer where the memory budget holds fewer); a forward pass that reads attention
        takes this many. None: as many as the memory budget holds (on CPU the engines also
        take about 4,096 tokens' worth per device, see
        :func:`~jaxvit_interp.budget.default_step_tokens`).
      memory_budget_bytes: per-device working-set budget the batches are planned for (the
        command line's ``--memory-budget-mb``); None:
        :func:`~jaxvit_interp.budget.default_memory_budget`.
      mesh: a ``jax.sharding.Mesh`` whose devices share each batch's images; None: the
        default device.
      progress: ``True`` (a bar on a terminal, lines on stderr elsewhere), ``False``, or a
        :class:`~jaxvit_interp.progress.Share` of a caller's stage
        (:func:`~jaxvit_interp.progress.start_progress`).
    """

    batch_size: int | None = None
    memory_budget_bytes: int | None = None
    mesh: Mesh | None = None
    progress: ProgressArg = True

    def __post_init__(self):
        object.__setattr__(self, "batch_size", check_positive("batch_size", self.batch_size))
        object.__setattr__(
            self,
            "memory_budget_bytes",
            check_positive("memory_budget_bytes", self.memory_budget_bytes),
        )
        if self.mesh is not None and not isinstance(self.mesh, Mesh):
            raise InputError(f"mesh must be a jax.sharding.Mesh, got {type(self.mesh).__name__}")
        if isinstance(self.progress, np.bool_):
            object.__setattr__(self, "progress", bool(self.progress))
        if not isinstance(self.progress, bool | Share):
            raise InputError(
                "progress must be True, False or a Share of a caller's progress, got "
                f"{self.progress!r}"
            )

    @property
    def num_devices(self) -> int:
        """Devices that share each batch's images."""
        return 1 if self.mesh is None else self.mesh.size

    def budget_bytes(self) -> int:
        """The per-device budget: the one given, else the default for this machine."""
        return self.memory_budget_bytes or default_memory_budget()

    def with_progress(self, progress: ProgressArg) -> Execution:
        """The same execution reporting to ``progress`` (a callee's share of a stage)."""
        return dataclasses.replace(self, progress=progress)

    def batcher(self, batch_size: int) -> Batcher:
        """Batches of ``batch_size`` images over this execution's devices."""
        return Batcher(batch_size, self.mesh)

    def pass_batcher(
        self, config: ViTConfig, params: Any, num_images: int, image_bytes: int | None = None
    ) -> Batcher:
        """Batches for a forward pass over ``num_images`` images that reads every layer's
        attention: ``batch_size`` images, else as many as the memory budget holds at
        ``image_bytes`` an image (:func:`~jaxvit_interp.budget.pass_images`; None: the
        attention pass's estimate); never more than ``num_images`` rounded up to whole devices
        (a padded image is work and memory for nothing)."""
        if self.batch_size is None:
            size = pass_images(
                config,
                self,
                num_images=num_images,
                fixed_bytes=params_bytes(params),
                image_bytes=image_bytes,
            )
        else:
            whole = max(1, -(-num_images // self.num_devices)) * self.num_devices
            size = min(self.batch_size, whole)
        return self.batcher(size)


def as_execution(execution: Execution | None) -> Execution:
    """``execution``, or the default :class:`Execution` for None; anything else is refused."""
    if execution is None:
        return Execution()
    if not isinstance(execution, Execution):
        raise InputError(
            "execution must be a jaxvit_interp.Execution (batch size, memory budget, mesh, "
            f"progress), got {type(execution).__name__}"
        )
    return execution
