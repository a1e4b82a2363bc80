"""Hop strength streamed over many images: per-image ("local") and over-images ("global") results.

Attention is consumed one batch at a time and only the per-head results (a few numbers per head)
are kept, so ``[image, layer, head, N, N]`` for the whole image set never exists: ViT-B/16 over
1,000 images would be 22 GB of float32 attention, its results under 20 MB.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import flax.struct
import jax
import numpy as np

from jaxvit_interp.attention_pass import reduce_over_images
from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution
from jaxvit_interp.importance.validate import check_unpruned
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.progress import ProgressArg, start_progress
from jaxvit_interp.quantities import ENTROPY_BINS, SPECIAL_FIELDS
from jaxvit_interp.strength.hops import HopRings, hop_rings, rings_for
from jaxvit_interp.strength.kernels import (
    HopStrength,
    StrengthSummary,
    hop_strength_kernel,
    summarize_kernel,
)
from jaxvit_interp.strength.measure import check_attention_shape, check_rows, default_atol
from jaxvit_interp.strength.special import SpecialTokenMass, special_token_mass_kernel
from jaxvit_interp.summary import Summarized, number, sizes, top_heads

# Images in messages are counted over the whole stream, not within the batch.
_AXES = "image layer head query"


@flax.struct.dataclass(repr=False)
class StrengthResults(Summarized):
    """Hop strength of every head on every image, and its distribution over the images.

    Attributes:
      local: :class:`HopStrength` of NumPy arrays with leading axes ``[image, layer, head]``.
      summary: the global results, :class:`StrengthSummary` over the images.
      grid: patch grid ``(Gh, Gw)``; static.
      patch_size: pixels per patch ``(height, width)``, the unit of ``distance``; static.
      has_cls_token: whether the model has a CLS token (CLS fields are NaN when not); static.
      num_prefix_tokens: special tokens before the patches (CLS, distillation, registers), or
        None for the CLS token alone; static.
    """

    local: HopStrength
    summary: StrengthSummary
    grid: tuple[int, int] = flax.struct.field(pytree_node=False)
    patch_size: tuple[int, int] = flax.struct.field(pytree_node=False)
    has_cls_token: bool = flax.struct.field(pytree_node=False)
    num_prefix_tokens: int = flax.struct.field(pytree_node=False, default=None)

    @property
    def num_hops(self) -> int:
        return max(self.grid)

    def _summary(self):
        images, layers, heads = np.shape(self.local.head_entropy)
        entropy = np.asarray(self.local.head_entropy, np.float64)
        rows = [
            ("hops", f"0 to {self.num_hops - 1} on the {self.grid[0]}x{self.grid[1]} patch grid"),
            (
                "head entropy",
                f"{number(entropy.mean())} nats on average; lowest: "
                + top_heads(entropy, highest=False),
            ),
            (
                "distance",
                f"{number(np.nanmean(self.local.distance))} px on average; farthest: "
                + top_heads(np.asarray(self.local.distance)),
            ),
        ]
        return sizes(images=images, layers=layers, heads=heads), rows


def summarize(local: HopStrength, *, num_bins: int = ENTROPY_BINS) -> StrengthSummary:
    """Global results (NumPy) from per-image results with leading axes ``[image, layer, head]``."""
    if np.ndim(local.head_entropy) != 3:
        raise InputError(
            f"per-image results must have leading axes [image, layer, head]; head_entropy has "
            f"shape {np.shape(local.head_entropy)}"
        )
    if np.shape(local.head_entropy)[0] == 0:
        raise InputError("no images to summarise: the per-image results are empty")
    if num_bins < 1:
        raise InputError(f"num_bins must be at least 1, got {num_bins}")
    return jax.device_get(summarize_kernel(local, num_bins=num_bins))


def _collect(
    batches: Iterator[tuple[Any, int, tuple[int, ...], Any]],
    rings: HopRings,
    *,
    total: int | None,
    check_stochastic: bool,
    atol: float | None,
    num_bins: int,
    progress: ProgressArg,
) -> StrengthResults:
    """Fetch kernel outputs batch by batch, check their rows, and stack the per-image results.

    ``batches`` yields ``((result, row_sums, row_min), valid, shape, dtype)``: device outputs of
    one batch, how many leading images are real (the rest are padding), the attention shape for
    messages and its dtype (for the default tolerance). Fetching the previous batch after the
    next one is dispatched keeps an accelerator busy while the host checks and copies.
    """
    local: list[HopStrength] = []
    done = 0
    with start_progress(progress, total=total, desc="hop strength", unit="img") as bar:

        def fetch(pending):
            nonlocal done
            outputs, valid, shape, dtype = pending
            result, row_sums, row_min = jax.device_get(outputs)
            row_sums, row_min = row_sums[:valid], row_min[:valid]
            check_rows(
                row_sums,
                row_min,
                shape,
                check_stochastic=check_stochastic,
                atol=default_atol(dtype) if atol is None else atol,
                axis_names=_AXES,
                index_offset=done,
            )
            local.append(jax.tree.map(lambda x: x[:valid], result))
            done += valid
            bar.update(valid)

        pending = None
        for item in batches:
            if pending is not None:
                fetch(pending)
            pending = item
        if pending is not None:
            fetch(pending)

    if not local:
        raise InputError("no attention batches were given: nothing to measure")
    stacked = jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *local)
    return StrengthResults(
        local=stacked,
        summary=summarize(stacked, num_bins=num_bins),
        grid=rings.grid,
        patch_size=rings.patch_size,
        has_cls_token=rings.has_cls_token,
        num_prefix_tokens=rings.num_prefix_tokens,
    )


def strength_over_images(
    attention_batches: Iterable,
    grid,
    *,
    has_cls_token: bool = True,
    patch_size=(1, 1),
    num_images: int | None = None,
    check_stochastic: bool = True,
    atol: float | None = None,
    num_bins: int = ENTROPY_BINS,
    progress: ProgressArg = True,
    num_prefix_tokens: int | None = None,
) -> StrengthResults:
    """Hop strength of attention arriving in batches of images (e.g. from a generator).

    Args:
      attention_batches: iterable of ``[batch, layer, head, N, N]`` attention arrays (NumPy or
        JAX); batch sizes may differ, layer and head counts may not. Only one batch is held at a
        time (two while an accelerator overlaps them).
      grid, has_cls_token, patch_size, check_stochastic, atol, num_prefix_tokens: as in
        :func:`.hop_strength`.
      num_images: total images, for the progress report only.
      num_bins: bins of the entropy histogram over ``[0, ln K]``.
      progress: report the images as they are done
        (:func:`~jaxvit_interp.progress.start_progress`).

    Returns:
      :class:`StrengthResults`: ``local`` ``[image, layer, head, ...]`` and the ``summary``.

    Raises:
      ValueError: a batch is not ``[batch, layer, head, N, N]`` with ``N`` matching the grid, its
        layer/head counts differ from the first batch's, or its rows fail the checks of
        :func:`.hop_strength` (the message names the image, layer, head and query).
    """
    rings = hop_rings(
        grid,
        has_cls_token=has_cls_token,
        patch_size=patch_size,
        num_prefix_tokens=num_prefix_tokens,
    )

    def run() -> Iterator[tuple[Any, int, tuple[int, ...], Any]]:
        first_shape = None
        for attention in attention_batches:
            shape = tuple(np.shape(attention))
            if len(shape) != 5:
                raise InputError(
                    f"attention batch has shape {shape}; expected [batch, layer, head, N, N]"
                )
            check_attention_shape(shape, rings)
            if first_shape is None:
                first_shape = shape
            elif shape[1:3] != first_shape[1:3]:
                raise InputError(
                    f"attention batch has shape {shape}, but the first batch had {first_shape}: "
                    f"layer and head counts must not change between batches"
                )
            dtype = getattr(attention, "dtype", np.float32)
            yield hop_strength_kernel(attention, rings), shape[0], shape, dtype

    return _collect(
        run(),
        rings,
        total=num_images,
        check_stochastic=check_stochastic,
        atol=atol,
        num_bins=num_bins,
        progress=progress,
    )


def _check_images(config: ViTConfig, images, what: str) -> int:
    """The number of images, after checking they are ``[image, height, width, channels]`` and
    the model has all its heads."""
    check_unpruned(config, what)
    num_images = len(images)
    expected = (*config.image_size, config.channels)
    if num_images == 0 or tuple(np.shape(images)[1:]) != expected:
        raise InputError(
            f"images have shape {tuple(np.shape(images))}; expected [image, {expected[0]}, "
            f"{expected[1]}, {expected[2]}] with at least one image"
        )
    return num_images


@dataclasses.dataclass(frozen=True)
class HopStrengthReducer:
    """Hop strength of every head of a batch, as a reducer of the attention pass
    (:mod:`jaxvit_interp.attention_pass`): :class:`~.kernels.HopStrength`'s fields
    ``[batch, layer, head, ...]`` plus each row's sum and smallest entry, which :meth:`finish`
    checks on the host (rows that are not distributions: non-finite pixels or weights).

    Attributes:
      check_stochastic, atol: as in :func:`strength_over_images` (None: float32's tolerance).
    """

    check_stochastic: bool = True
    atol: float | None = None
    name: str = "strength"

    def __call__(self, config: ViTConfig, out) -> dict[str, jax.Array]:
        result, row_sums, row_min = hop_strength_kernel(out.attention, rings_for(config))
        return {**_fields(result), "row_sums": row_sums, "row_min": row_min}

    def finish(self, outputs: dict[str, np.ndarray], start: int) -> dict[str, np.ndarray]:
        row_sums = outputs["row_sums"]
        check_rows(
            row_sums,
            outputs["row_min"],
            (*row_sums.shape, row_sums.shape[-1]),
            check_stochastic=self.check_stochastic,
            atol=default_atol(np.float32) if self.atol is None else self.atol,
            axis_names=_AXES,
            index_offset=start,
        )
        # The row statistics were only for the check.
        return {k: v for k, v in outputs.items() if k not in ("row_sums", "row_min")}

    @staticmethod
    def result(outputs: dict[str, np.ndarray]) -> HopStrength:
        """The per-image :class:`~.kernels.HopStrength` from this reducer's outputs."""
        return HopStrength(**{f.name: outputs[f.name] for f in dataclasses.fields(HopStrength)})


@dataclasses.dataclass(frozen=True)
class SpecialMassReducer:
    """Attention to and from each special token of a batch, as a reducer of the attention pass:
    :class:`~.special.SpecialTokenMass`'s fields ``[batch, layer, head, ...]``."""

    name: str = "special"

    def __call__(self, config: ViTConfig, out) -> dict[str, jax.Array]:
        return _fields(special_token_mass_kernel(out.attention, config.num_prefix_tokens))

    @staticmethod
    def result(outputs: dict[str, np.ndarray]) -> SpecialTokenMass:
        """The per-image :class:`~.special.SpecialTokenMass` from this reducer's outputs."""
        return SpecialTokenMass(
            **{f.name: outputs[f.name] for f in dataclasses.fields(SpecialTokenMass)}
        )


def _fields(struct) -> dict:
    """A flax struct dataclass as ``{field: value}``."""
    return {f.name: getattr(struct, f.name) for f in dataclasses.fields(struct)}


def model_strength_over_images(
    config: ViTConfig,
    params,
    images,
    *,
    check_stochastic: bool = True,
    atol: float | None = None,
    num_bins: int = ENTROPY_BINS,
    execution: Execution | None = None,
) -> StrengthResults:
    """Run the model over ``images`` batch by batch and measure every head's hop strength.

    Args:
      config: the model's :class:`~jaxvit_interp.model.config.ViTConfig` (its grid, patch size
        and classifier give the rings and whether there is a CLS token).
      params: its parameter tree.
      images: ``[image, height, width, channels]`` preprocessed images (a NumPy array, memmap or
        anything sliceable); each batch is copied to the device on its own.
      check_stochastic, atol, num_bins: as in :func:`strength_over_images`.
      execution: how the passes run (:class:`~jaxvit_interp.execution.Execution`): images per
        forward pass over all devices (default: as many as its memory budget holds,
        :meth:`~jaxvit_interp.execution.Execution.pass_batcher`; the last batch is padded to
        that size, so the program compiles once), the mesh that shards them and the progress
        report; None: the defaults.

    Returns:
      :class:`StrengthResults` with ``local`` ``[image, layer, head, ...]`` and the ``summary``.
    """
    _check_images(config, images, "model_strength_over_images")
    reducer = HopStrengthReducer(check_stochastic=check_stochastic, atol=atol)
    outputs = reduce_over_images(config, params, images, reducer, execution, desc="hop strength")
    local = reducer.result(outputs)
    rings = rings_for(config)
    return StrengthResults(
        local=local,
        summary=summarize(local, num_bins=num_bins),
        grid=rings.grid,
        patch_size=rings.patch_size,
        has_cls_token=rings.has_cls_token,
        num_prefix_tokens=rings.num_prefix_tokens,
    )


def model_special_mass_over_images(
    config: ViTConfig,
    params,
    images,
    *,
    execution: Execution | None = None,
) -> SpecialTokenMass:
    """Run the model over ``images`` batch by batch and measure every head's attention to and
    from each special token (:func:`~jaxvit_interp.strength.special.special_token_mass`).

    Args:
      config, params: the model; it needs at least one special token (CLS, distillation or a
        register: ``config.num_prefix_tokens``), named in token order by
        :func:`~jaxvit_interp.strength.special.special_token_names`.
      images, execution: as in :func:`model_strength_over_images`.

    Returns:
      :class:`~jaxvit_interp.strength.special.SpecialTokenMass` of NumPy arrays with leading
      axes ``[image, layer, head]``.
    """
    _check_images(config, images, "model_special_mass_over_images")
    if not config.num_prefix_tokens:
        raise InputError(
            "the model has no special tokens (no CLS, distillation or register token): there is "
            "no special-token mass to measure"
        )
    reducer = SpecialMassReducer()
    outputs = reduce_over_images(
        config, params, images, reducer, execution, desc="special-token mass"
    )
    return reducer.result(outputs)


def special_part(local: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-image attention mass to and from each special token ``[image, layer, head, token]``
    (:mod:`~jaxvit_interp.strength.special`) plus the means over the images, with the mean
    attention the special tokens pay each other ``[layer, head, token, token]``."""
    part = {f: np.asarray(local[f], np.float32) for f in SPECIAL_FIELDS}
    part.update({f"{f}_mean": v.mean(axis=0) for f, v in part.items()})
    part["special_between_mean"] = np.asarray(local["special_between"], np.float32).mean(axis=0)
    return part
