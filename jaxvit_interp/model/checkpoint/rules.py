"""Name maps as data: rules that move checkpoint tensors to parameter-tree entries.

A :class:`Rule` names its source keys (as written in the file), its target keys (``/``-joined
paths in the :class:`~jaxvit_interp.model.vit.VisionTransformer` parameter tree) and a *kind*.
A kind is a pair of functions: ``forward`` turns source arrays into target arrays, and
``source_shapes`` gives the source shapes that the target shapes imply. The second one lets every
family's expected file layout be derived from the model itself (``jax.eval_shape`` of
``init_params``), so missing, extra and mis-shaped tensors are reported in the file's own names
and layout, and no family keeps a hand-written shape table that could drift from the model.

Layouts: Flax ``Dense`` kernels are ``[in, out]``; PyTorch ``Linear`` weights ``[out, in]``.
Flax ``Conv`` kernels are ``[height, width, in, out]``; PyTorch ``Conv2d`` ``[out, in, height,
width]``. The attention projections here are per head: query/key/value kernels
``[hidden, head, head_dim]``, biases ``[head, head_dim]``, the output kernel
``[head, head_dim, hidden]``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np
from flax import traverse_util

from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.model.vit import init_params

Shape = tuple[int, ...]
# The encoder block's attention and MLP modules, and the pooling head's attention, in the tree.
MHA = "MultiHeadDotProductAttention_1"
MLP = "MlpBlock_3"
MAP = "MAPHead_0/MultiHeadDotProductAttention_0"


@dataclasses.dataclass(frozen=True)
class Rule:
    """Source keys in the file -> target keys in the parameter tree, converted by ``kind``."""

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    kind: str = "same"


@dataclasses.dataclass(frozen=True)
class Kind:
    """``forward`` converts, ``source_shapes`` derives the file's shapes from the targets', and
    ``describe`` says in words what is done (``inspect_checkpoint`` shows it per key)."""

    forward: Callable[[Sequence[np.ndarray], Sequence[Shape]], list[np.ndarray]]
    source_shapes: Callable[[Sequence[Shape]], list[Shape]]
    describe: str = "copied"


def _split_heads_in(w: np.ndarray, shape: Shape) -> np.ndarray:
    # torch [head*head_dim, hidden] -> [hidden, head, head_dim]
    return w.T.reshape(shape)


def _qkv(arrays, shapes):
    # timm and PyTorch's MultiheadAttention fuse query, key and value (or key and value) along
    # the output axis, in that order.
    parts = np.split(arrays[0], len(shapes), axis=0)
    return [_split_heads_in(x, s) for x, s in zip(parts, shapes, strict=True)]


def _qkv_shapes(shapes):
    hidden, heads, head_dim = shapes[0]
    return [(len(shapes) * heads * head_dim, hidden)]


def _qkv_bias(arrays, shapes):
    parts = np.split(arrays[0], len(shapes))
    return [x.reshape(s) for x, s in zip(parts, shapes, strict=True)]


def _posemb_add_cls(arrays, shapes):
    # big_vision adds position embeddings to the patches before the CLS token is prepended, so
    # the CLS token has none: a zero row reproduces that in a model that adds them after.
    (pe,) = arrays
    zero = np.zeros((pe.shape[0], 1, pe.shape[2]), pe.dtype)
    return [np.concatenate([zero, pe], axis=1)]


KINDS: dict[str, Kind] = {
    "same": Kind(lambda a, s: [a[0]], lambda s: [s[0]]),
    "linear": Kind(
        lambda a, s: [a[0].T],
        lambda s: [tuple(reversed(s[0]))],
        "transposed [out, in] -> [in, out]",
    ),
    "conv": Kind(
        lambda a, s: [a[0].transpose(2, 3, 1, 0)],
        lambda s: [(s[0][3], s[0][2], s[0][0], s[0][1])],
        "convolution [out, in, h, w] -> [h, w, in, out]",
    ),
    "heads_in": Kind(
        lambda a, s: [_split_heads_in(a[0], s[0])],
        lambda s: [(s[0][1] * s[0][2], s[0][0])],
        "transposed, split into heads",
    ),
    "heads_bias": Kind(
        lambda a, s: [a[0].reshape(s[0])], lambda s: [(s[0][0] * s[0][1],)], "split into heads"
    ),
    "heads_out": Kind(
        # torch [hidden, head*head_dim] -> [head, head_dim, hidden]
        lambda a, s: [a[0].T.reshape(s[0])],
        lambda s: [(s[0][2], s[0][0] * s[0][1])],
        "transposed, split into heads",
    ),
    "qkv": Kind(_qkv, _qkv_shapes, "fused projections split, transposed, split into heads"),
    "qkv_bias": Kind(
        _qkv_bias, lambda s: [(len(s) * s[0][0] * s[0][1],)], "fused biases split into heads"
    ),
    # big_vision's scanned encoder: one array with a leading layer axis for all blocks.
    "stacked": Kind(
        lambda a, s: list(a[0]), lambda s: [(len(s), *s[0])], "split along the layer axis"
    ),
    "posemb_add_cls": Kind(
        _posemb_add_cls,
        lambda s: [(s[0][0], s[0][1] - 1, s[0][2])],
        "a zero row prepended: the CLS token gets no position embedding",
    ),
    # CLIP keeps its class token as a vector and its position table without the batch axis.
    "token": Kind(
        lambda a, s: [a[0].reshape(s[0])], lambda s: [(s[0][-1],)], "reshaped to [1, 1, hidden]"
    ),
    "table": Kind(
        lambda a, s: [a[0].reshape(s[0])], lambda s: [s[0][1:]], "reshaped to [1, token, hidden]"
    ),
}


@functools.lru_cache(maxsize=32)
def expected_targets(config: ViTConfig) -> dict[str, Shape]:
    """Flat ``{"/"-joined path: shape}`` of the parameter tree ``init_params(config)`` builds.

    Shapes come from ``jax.eval_shape``, so nothing is allocated even for ViT-H.
    """
    tree = jax.eval_shape(functools.partial(init_params, config))
    flat = traverse_util.flatten_dict(tree, sep="/")
    return {key: tuple(int(d) for d in leaf.shape) for key, leaf in sorted(flat.items())}


def expected_sources(rules: Sequence[Rule], targets: Mapping[str, Shape]) -> dict[str, Shape]:
    """The file keys and shapes that ``rules`` need to fill ``targets``."""
    out: dict[str, Shape] = {}
    for rule in rules:
        shapes = KINDS[rule.kind].source_shapes([targets[t] for t in rule.targets])
        out.update(zip(rule.sources, (tuple(s) for s in shapes), strict=True))
    return out


def check_coverage(rules: Sequence[Rule], targets: Mapping[str, Shape]) -> None:
    """Every target filled by exactly one rule (a wrong name map is a bug, not bad input)."""
    filled = [t for rule in rules for t in rule.targets]
    missing = sorted(set(targets) - set(filled))
    unknown = sorted(set(filled) - set(targets))
    twice = sorted({t for t in filled if filled.count(t) > 1})
    if missing or unknown or twice:
        raise AssertionError(
            f"name map does not fit the parameter tree: unfilled {missing}, unknown {unknown}, "
            f"filled twice {twice}"
        )


def apply_rules(
    rules: Sequence[Rule], tensors: Mapping[str, np.ndarray], targets: Mapping[str, Shape]
) -> dict[str, np.ndarray]:
    """Convert ``tensors`` (file keys) into a flat parameter dict, every array float32.

    Float32 throughout because the analyses compare small differences of probabilities;
    bfloat16 / float16 files widen exactly.
    """
    flat: dict[str, np.ndarray] = {}
    for rule in rules:
        arrays = [np.asarray(tensors[s]) for s in rule.sources]
        outs = KINDS[rule.kind].forward(arrays, [targets[t] for t in rule.targets])
        for target, array in zip(rule.targets, outs, strict=True):
            flat[target] = np.ascontiguousarray(array, dtype=np.float32)
    return flat


Entry = tuple[str, tuple[str, ...], str]  # (source, targets, kind) with "{i}" for the block


def norm_entries(source: str, target: str) -> list[Entry]:
    """A PyTorch ``LayerNorm`` ``source.{weight,bias}`` -> ``target/{scale,bias}``."""
    return [
        (f"{source}.weight", (f"{target}/scale",), "same"),
        (f"{source}.bias", (f"{target}/bias",), "same"),
    ]


def linear_entries(
    source: str, target: str, kind: str = "linear", bias_kind: str = "same"
) -> list[Entry]:
    """A PyTorch ``Linear`` ``source.{weight,bias}`` -> ``target/{kernel,bias}``."""
    return [
        (f"{source}.weight", (f"{target}/kernel",), kind),
        (f"{source}.bias", (f"{target}/bias",), bias_kind),
    ]


def attention_entries(sources: dict[str, str], target: str) -> list[Entry]:
    """Per-projection Linears (``sources`` names ``query``, ``key``, ``value``, ``out``) ->
    ``target/{query,key,value,out}`` split into heads."""
    entries = []
    for name, source in sources.items():
        if name == "out":
            entries += linear_entries(source, f"{target}/out", "heads_out")
        else:
            entries += linear_entries(source, f"{target}/{name}", "heads_in", "heads_bias")
    return entries


def fused_entries(weight: str, bias: str, targets: tuple[str, ...]) -> list[Entry]:
    """Fused projections (query, key, value; or key, value) -> each target's kernel and bias."""
    return [
        (weight, tuple(f"{t}/kernel" for t in targets), "qkv"),
        (bias, tuple(f"{t}/bias" for t in targets), "qkv_bias"),
    ]


def map_head_entries(
    probe: str, attention: list[Entry], norm: str, mlp: tuple[str, str]
) -> list[Entry]:
    """The attention-pooling head from PyTorch names: its probe, attention (entries targeting
    :data:`MAP`), the norm before its MLP and the MLP's two Linears."""
    return [
        (probe, ("MAPHead_0/probe",), "same"),
        *attention,
        *norm_entries(norm, "MAPHead_0/LayerNorm_0"),
        *linear_entries(mlp[0], "MAPHead_0/MlpBlock_0/Dense_0"),
        *linear_entries(mlp[1], "MAPHead_0/MlpBlock_0/Dense_1"),
    ]


def rules_from_table(config: ViTConfig, top, block) -> list[Rule]:
    """Instantiate a ``(source, targets, kind)`` table for ``config``'s parameter tree.

    ``top`` entries name whole-tree paths, ``block`` entries paths below
    ``Transformer/encoderblock_{i}/`` with ``{i}`` in the source for the block index.  An entry
    is used when all its targets exist in the tree, so one table serves every option of a family
    (bias entries drop out for ``qkv_bias=False``, ``cls`` for a model without one, ...).
    """
    targets = expected_targets(config)
    rules = []
    for source, names, kind in top:
        if all(n in targets for n in names):
            rules.append(Rule((source,), tuple(names), kind))
    for i in range(config.num_layers):
        for source, names, kind in block:
            full = tuple(f"Transformer/encoderblock_{i}/{n}" for n in names)
            if all(n in targets for n in full):
                rules.append(Rule((source.format(i=i),), full, kind))
    return rules


def identity_rules(targets: Mapping[str, Shape], prefix: str = "") -> list[Rule]:
    """Rules for files that already use this project's names (vit_jax ``.npz``, own format)."""
    return [Rule((prefix + t,), (t,)) for t in targets]


def unflatten(flat: Mapping[str, object]) -> dict:
    """``{"a/b": x}`` -> ``{"a": {"b": x}}``."""
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def flatten(tree) -> dict[str, object]:
    """``{"a": {"b": x}}`` -> ``{"a/b": x}``."""
    return traverse_util.flatten_dict(tree, sep="/")
