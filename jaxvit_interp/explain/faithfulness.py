"""Faithfulness of input-level maps: deletion and insertion curves (Petsiuk et al. 2018).

A map over the patch grid ``[Gh, Gw]`` claims some patches matter more than others for the
label. Deletion replaces the patches it ranks first by a baseline, a growing number of them at
each step, and follows the softmax probability of the label: a faithful map makes it fall fast
(a small area under the curve). Insertion starts from the baseline image and puts the top
patches back: a faithful map makes it rise fast (a large area). Each image's curve is
compared with one of a fixed random patch order, seeded, so that a map is read against chance.

At step ``k`` of ``steps`` the top ``round(k * P / steps)`` patches (``P = Gh * Gw``; Python's
``round``, halves to even) by map value are replaced, ties broken by patch index (row-major,
lower first). The replacement pixels are a baseline of :mod:`jaxvit_interp.explain.baselines`
(``"zero"``, each image's ``"mean"`` colour, or its ``"blur"``), in the preprocessed space the
model reads.

Every step of every map of a batch of images runs in one compiled call: the masks are built on
the device from the maps, and the ``(map, step)`` images of each image are ``vmap``-ped through
the model; batches are planned by :class:`~jaxvit_interp.execution.Execution` from the bytes one
forward pass holds, times the forwards an image costs.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxvit_interp.budget import block_work_bytes, params_bytes, usable_bytes
from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution, as_execution, check_positive
from jaxvit_interp.explain.baselines import BASELINE_KINDS, baseline_images
from jaxvit_interp.importance.validate import check_images, check_labels
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.model.vit import forward

Array = jax.Array

__all__ = [
    "MODES",
    "Faithfulness",
    "curve_area",
    "faithfulness",
    "removal_counts",
]

MODES = ("deletion", "insertion")
# Without a seed, the random reference orders are drawn from this one: the same every call.
DEFAULT_RANDOM_SEED = 0


class Faithfulness(NamedTuple):
    """Deletion or insertion curves of one map per image, and of a random order.

    Attributes:
      curves: ``[image, steps + 1]`` softmax probability of the label after each step (step 0:
        the image itself for deletion, the baseline image for insertion).
      area: ``[image]`` the trapezoid area under ``curves`` over ``x`` in ``[0, 1]``.
      random_curves: ``[image, steps + 1]`` the same for one fixed random patch order per image.
      random_area: ``[image]``.
      labels: ``[image]`` the labels followed (the model's own predictions where none given).
      mode, baseline: as asked.
    """

    curves: np.ndarray
    area: np.ndarray
    random_curves: np.ndarray
    random_area: np.ndarray
    labels: np.ndarray
    mode: str
    baseline: str


def removal_counts(num_patches: int, steps: int) -> tuple[int, ...]:
    """Patches replaced after each step ``k = 0 .. steps``: ``round(k * P / steps)``."""
    return tuple(round(k * num_patches / steps) for k in range(steps + 1))


def curve_area(curves) -> np.ndarray:
    """Trapezoid area under ``curves`` ``[..., steps + 1]`` sampled evenly over ``[0, 1]``."""
    curves = np.asarray(curves, np.float64)
    steps = curves.shape[-1] - 1
    return ((curves[..., 1:] + curves[..., :-1]).sum(-1) / (2 * steps)).astype(np.float32)


def removal_ranks(maps: Array) -> Array:
    """Each patch's place in the removal order, ``[..., P] -> [..., P]`` int: 0 for the highest
    map value; ties go to the lower patch index first (a stable sort of the negated values)."""
    order = jnp.argsort(-maps, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1)


def _pixel_mask(config: ViTConfig, patch_mask: Array) -> Array:
    """``[..., P]`` patch mask -> ``[..., height, width]`` over each patch's pixels."""
    (gh, gw), (ph, pw) = config.grid, config.patch_size
    grid = patch_mask.reshape(*patch_mask.shape[:-1], gh, gw)
    return jnp.repeat(jnp.repeat(grid, ph, axis=-2), pw, axis=-1)


@functools.partial(
    jax.jit, static_argnames=("config", "mode", "baseline", "counts", "maps_per_call")
)
def _curves_batch(
    config: ViTConfig, params, images, maps, labels, *, mode, baseline, counts, maps_per_call
):
    """``images`` ``[b, H, W, C]``, ``maps`` ``[b, K, P]``, ``labels`` ``[b]`` (None: the
    prediction) -> curves ``[b, K, steps + 1]`` and the labels followed."""
    images = images.astype(jnp.float32)
    if labels is None:
        labels = jnp.argmax(forward(config, params, images).logits, axis=-1)
    base = baseline_images(config, baseline, images)
    counts = jnp.asarray(counts)
    b = images.shape[0]

    def one_map(ranks):  # [b, P]: one map of each image
        replaced = _pixel_mask(config, ranks[:, None, :] < counts[None, :, None])  # [b, S, H, W]
        replaced = replaced[..., None]
        if mode == "deletion":
            x = jnp.where(replaced, base[:, None], images[:, None])
        else:
            x = jnp.where(replaced, images[:, None], base[:, None])
        logits = forward(config, params, x.reshape(-1, *images.shape[1:])).logits
        probs = jax.nn.softmax(logits.reshape(b, len(counts), -1), axis=-1)
        return jnp.take_along_axis(probs, labels[:, None, None], axis=-1)[..., 0]  # [b, S]

    ranks = jnp.moveaxis(removal_ranks(maps), 1, 0)  # [K, b, P]
    curves = jax.lax.map(one_map, ranks, batch_size=maps_per_call)  # [K, b, S]
    return {"curves": jnp.moveaxis(curves, 0, 1), "labels": labels}


def check_classifier_for(config: ViTConfig, what: str, otherwise: str = "") -> None:
    """Refuse a backbone (``num_classes == 0``): it has no class logit to follow.

    The one wording of this refusal in :mod:`jaxvit_interp.explain`: ``what`` names the call
    and what it asked, ending in a verb of which "a class's logit" is the object (``"explain:
    methods gradcam explain"``); ``otherwise`` adds what the caller could ask instead.
    """
    if config.num_classes:
        return
    raise InputError(
        f"{what} a class's logit, and this model is a backbone without a classifier "
        "(num_classes=0); make it a classifier with a linear probe first "
        "(jaxvit_interp.model.probe: with_probe(config, params, LinearProbe.load(path)))"
        + otherwise
    )


def check_choice(name: str, value, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else an :class:`InputError` naming ``name``."""
    if value not in choices:
        raise InputError(f"unknown {name} {value!r}; expected one of {', '.join(choices)}")
    return value


def check_maps(config: ViTConfig, maps, num_images: int, name: str = "maps") -> np.ndarray:
    """``maps`` ``[image, Gh, Gw]`` (or ``[image, ..., Gh, Gw]``) finite, as float32."""
    maps = np.asarray(maps)
    if maps.dtype.kind not in "fiub":
        raise InputError(f"{name} must be a numeric array [image, Gh, Gw], got dtype {maps.dtype}")
    maps = maps.astype(np.float32)
    if maps.ndim < 3 or maps.shape[0] != num_images or maps.shape[-2:] != config.grid:
        raise InputError(
            f"{name} have shape {maps.shape}; expected [image, Gh, Gw] = "
            f"({num_images}, {config.grid[0]}, {config.grid[1]}): one map over this model's "
            "patch grid per image"
        )
    bad = ~np.isfinite(maps).reshape(num_images, -1).all(axis=1)
    if bad.any():
        raise InputError(
            f"{name} of {int(bad.sum())} image(s) hold NaN or infinite values, e.g. image index "
            + ", ".join(str(i) for i in np.flatnonzero(bad)[:5])
        )
    return maps


def random_orders_maps(config: ViTConfig, num_images: int, random_seed: int | None) -> np.ndarray:
    """``[image, P]`` maps whose removal order is one random permutation per image, seeded."""
    seed = DEFAULT_RANDOM_SEED if random_seed is None else random_seed
    rng = np.random.default_rng(seed)
    order = rng.random((num_images, config.num_patches)).argsort(axis=1)
    values = np.empty(order.shape, np.float32)
    # The patch placed r-th gets value P - r: highest first.
    np.put_along_axis(values, order, np.arange(config.num_patches, 0, -1, dtype=np.float32), 1)
    return values


def forward_bytes(config: ViTConfig) -> int:
    """Estimated live bytes of one image's forward pass that only reads logits: its pixels
    (the masked copy) and one block's working set (the planner's own estimate of it).

    Against XLA's memory analysis of :func:`_curves_batch` (22 forwards an image: 2 maps, 10
    steps): 1.04x what it allocates for ViT-S/16, 2-3x for a 65-token toy model.
    """
    pixels = 4 * config.image_size[0] * config.image_size[1] * config.channels
    return 2 * pixels + block_work_bytes(config)


def curves_over_images(
    config: ViTConfig,
    params: Any,
    images,
    labels,
    maps: np.ndarray,
    *,
    mode: str,
    steps: int,
    baseline: str,
    execution: Execution,
    random_seed: int | None,
    desc: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Curves ``[image, K, steps + 1]`` of ``K`` maps per image ``[image, K, P]`` (checked
    already), those of the seeded random order ``[image, steps + 1]`` and the labels followed
    ``[image]``.

    Each batch computes every ``(map, step)`` of its images in one call; the maps go through
    the model ``maps_per_call`` at a time (``jax.lax.map``), as many as the memory budget holds
    for one image, so the batch planner sizes the image axis from that.
    """
    random = random_orders_maps(config, len(images), random_seed)
    maps = np.concatenate([maps, random[:, None]], axis=1)
    counts = removal_counts(config.num_patches, steps)
    per_map = forward_bytes(config) * len(counts)
    room = usable_bytes(execution.budget_bytes(), params_bytes(params))
    maps_per_call = int(max(1, min(maps.shape[1], room // per_map)))
    batcher = execution.pass_batcher(
        config, params, len(images), image_bytes=maps_per_call * per_map
    )
    placed = batcher.replicate(params)
    out = batcher.map(
        lambda x, m, y: _curves_batch(
            config,
            placed,
            x,
            m,
            y,
            mode=mode,
            baseline=baseline,
            counts=counts,
            maps_per_call=maps_per_call,
        ),
        images,
        maps,
        labels,
        progress=execution.progress,
        desc=desc,
    )
    curves = out["curves"].astype(np.float32)
    return curves[:, :-1], curves[:, -1], out["labels"].astype(np.int32)


def check_curve_options(config: ViTConfig, mode, steps, baseline, what: str) -> int:
    """Mode, baseline and steps checked (steps as an int), and a backbone refused."""
    check_classifier_for(config, f"{what}: the curves follow the softmax of")
    check_choice("mode", mode, MODES)
    check_choice("baseline", baseline, BASELINE_KINDS)
    steps = check_positive("steps", steps)
    if steps is None:
        raise InputError("steps must be a positive int, got None")
    return steps


def faithfulness(
    config: ViTConfig,
    params: Any,
    images,
    labels,
    maps,
    *,
    mode: str = "deletion",
    steps: int = 10,
    baseline: str = "zero",
    execution: Execution | None = None,
    random_seed: int | None = None,
) -> Faithfulness:
    """Deletion or insertion curves of ``maps`` and of a random patch order (module docstring).

    Args:
      config, params: a classifier (a backbone is refused: it has no label to follow).
      images: ``[image, height, width, channels]`` preprocessed.
      labels: ``[image]`` class ids; None follows the model's own prediction on each image.
      maps: ``[image, Gh, Gw]`` one map per image over the patch grid, finite; higher values
        are replaced first.
      mode: ``"deletion"`` or ``"insertion"``.
      steps: points of the curve after its start: ``steps + 1`` in all.
      baseline: ``"zero"``, ``"mean"`` or ``"blur"`` (module docstring).
      execution: batch size, memory budget, devices and progress; None: the defaults.
      random_seed: seed of the random reference orders; None: a fixed seed (0), so the
        reference is the same every call.

    Returns:
      :class:`Faithfulness`.
    """
    steps = check_curve_options(config, mode, steps, baseline, "faithfulness")
    images = check_images(config, images)
    labels = check_labels(config, labels, len(images))
    maps = check_maps(config, maps, len(images))
    if maps.ndim != 3:
        raise InputError(f"maps have shape {maps.shape}; expected [image, Gh, Gw]")
    execution = as_execution(execution)
    curves, random_curves, followed = curves_over_images(
        config,
        params,
        images,
        labels,
        maps.reshape(len(images), 1, -1),
        mode=mode,
        steps=steps,
        baseline=baseline,
        execution=execution,
        random_seed=random_seed,
        desc=f"{mode} curves",
    )
    return Faithfulness(
        curves=curves[:, 0],
        area=curve_area(curves[:, 0]),
        random_curves=random_curves,
        random_area=curve_area(random_curves),
        labels=followed,
        mode=mode,
        baseline=baseline,
    )
