"""Linear probes: a user's classifier on a backbone's pooled output, for the label metrics.

A backbone (DINO, DINOv2, CLIP or SigLIP towers, MAE; ``num_classes == 0``) has no logits, so
``head_importance`` gives it only the ``layer`` and ``repr`` metrics.  A linear probe trained
elsewhere on the pooled vector (``ModelOutput.pre_logits``) becomes the model's ``head``, and
every metric then refers to the probe's classes::

    probe = LinearProbe.load("probe.npz")           # keys kernel [pooled, classes], bias [classes]
    config, params = with_probe(config, params, probe)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxvit_interp.errors import InputError
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.storage import UnreadableFileError, load_npz


@dataclasses.dataclass(frozen=True)
class LinearProbe:
    """``logits = pooled @ kernel + bias``.

    Attributes:
      kernel: ``[pooled, class]``, ``pooled`` the width of the model's pooled vector
        (:attr:`~jaxvit_interp.model.config.ViTConfig.pooled_size`).
      bias: ``[class]``.
      class_names: a name per class, or None.
    """

    kernel: np.ndarray
    bias: np.ndarray
    class_names: tuple[str, ...] | None = None

    def __post_init__(self):
        kernel = np.asarray(self.kernel, np.float32)
        bias = np.asarray(self.bias, np.float32)
        if kernel.ndim != 2 or kernel.shape[1] == 0:
            raise InputError(
                f"a linear probe's kernel must be [pooled width, classes] with at least one "
                f"class, got shape {kernel.shape}"
            )
        if bias.shape != kernel.shape[1:]:
            raise InputError(
                f"the probe's bias has shape {bias.shape}; its kernel {kernel.shape} needs "
                f"({kernel.shape[1]},)"
            )
        if not (np.isfinite(kernel).all() and np.isfinite(bias).all()):
            raise InputError("the probe's kernel or bias holds NaN or infinite values")
        names = self.class_names
        if names is not None:
            names = tuple(str(n) for n in names)
            if len(names) != kernel.shape[1]:
                raise InputError(
                    f"the probe names {len(names)} classes and has {kernel.shape[1]} outputs"
                )
        object.__setattr__(self, "kernel", kernel)
        object.__setattr__(self, "bias", bias)
        object.__setattr__(self, "class_names", names)

    @property
    def num_classes(self) -> int:
        return int(self.kernel.shape[1])

    @classmethod
    def load(cls, path) -> LinearProbe:
        """A probe from an ``.npz`` with ``kernel`` and ``bias`` (and optionally
        ``class_names``, an array of strings)."""
        try:
            arrays = load_npz(Path(path), what="linear probe")
        except UnreadableFileError as e:
            raise InputError(str(e)) from None
        missing = [k for k in ("kernel", "bias") if k not in arrays]
        if missing:
            raise InputError(
                f"{str(path)!r} holds no {' or '.join(missing)}: a linear probe .npz needs "
                f"'kernel' [pooled, classes] and 'bias' [classes] (found: "
                f"{', '.join(sorted(arrays)) or 'nothing'})"
            )
        names = arrays.get("class_names")
        return cls(arrays["kernel"], arrays["bias"], None if names is None else tuple(names))


def with_probe(
    config: ViTConfig, params: dict[str, Any], probe: LinearProbe
) -> tuple[ViTConfig, dict[str, Any]]:
    """The model with ``probe`` as its classifier: ``(config, params)`` with ``num_classes`` and
    ``head`` set from the probe.

    Any classifier the model had is replaced; a DeiT model's two heads become the probe reading
    the CLS token.  A probe whose kernel does not read the pooled width is refused before any
    model work.  A probe that names no classes gets the names a checkpoint's classifier would
    (:func:`~jaxvit_interp.data.imagenet.assumed_class_names`: ImageNet-1k's for 1,000 classes).
    """
    from jaxvit_interp.data.imagenet import assumed_class_names

    if probe.kernel.shape[0] != config.pooled_size:
        raise InputError(
            f"the probe reads vectors of width {probe.kernel.shape[0]}, and this model's pooled "
            f"output has width {config.pooled_size} (kernel shape {probe.kernel.shape}; expected "
            f"[{config.pooled_size}, classes])"
        )
    names = probe.class_names
    if names is None and (assumed := assumed_class_names(probe.num_classes, "the probe")):
        names = assumed[0]
    config = config.replace(
        num_classes=probe.num_classes, distillation_head=False, class_names=names
    )
    params = {k: v for k, v in params.items() if k not in ("head", "head_dist")}
    params["head"] = {"kernel": jnp.asarray(probe.kernel), "bias": jnp.asarray(probe.bias)}
    return config, params
