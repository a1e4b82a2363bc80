"""``load_checkpoint``: any supported checkpoint -> ``(ViTConfig, params)``.

The steps, each its own function so ``inspect_checkpoint`` can stop before converting:

1. read the container (:mod:`.files`): tensors by file key, plus side JSON files;
2. tell the naming family from the keys (:mod:`.flax_names`, :mod:`.torch_names`, own format);
3. read the architecture from tensor shapes and side files (:class:`.facts.Facts`);
4. settle the config: the file's, or the caller's checked against the file field by field;
5. derive the expected file layout from the model and compare key by key;
6. convert, resample the position embeddings if the image size changed, return float32 arrays.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxvit_interp.model.checkpoint import flax_names, torch_names
from jaxvit_interp.model.checkpoint.errors import CheckpointError, accepted_formats, shape_str
from jaxvit_interp.model.checkpoint.facts import (
    SHAPE_FIELDS,
    Facts,
    Family,
    guess_num_heads,
    square_grid,
)
from jaxvit_interp.model.checkpoint.files import RawCheckpoint, read_checkpoint
from jaxvit_interp.model.checkpoint.orbax_io import OwnFamily
from jaxvit_interp.model.checkpoint.posemb import resample_posemb
from jaxvit_interp.model.checkpoint.rules import (
    Rule,
    apply_rules,
    check_coverage,
    expected_sources,
    expected_targets,
    unflatten,
)
from jaxvit_interp.model.config import ViTConfig

POSEMB = "Transformer/posembed_input/pos_embedding"
MAX_LISTED = 20  # keys per section in an error message; inspect_checkpoint lists all


@dataclasses.dataclass(frozen=True)
class KeyCheck:
    """One file key against what the model needs.

    Attributes:
      key: the key as written in the file.
      found: its shape in the file, or None when missing.
      expected: the shape the model needs, or None when the model has no use for it.
      status: ``"ok"``, ``"missing"``, ``"extra"``, ``"mis-shaped"`` or ``"ignored"`` (known
        to be unused, e.g. Hugging Face's pooler).
      targets: the parameter paths it fills.
    """

    key: str
    found: tuple[int, ...] | None
    expected: tuple[int, ...] | None
    status: str
    targets: tuple[str, ...] = ()


@dataclasses.dataclass
class Plan:
    """Everything known about a checkpoint before converting it."""

    raw: RawCheckpoint
    family: Family
    facts: Facts
    config: ViTConfig | None = None
    file_config: ViTConfig | None = None
    contradictions: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    # Guesses that change results if wrong (the number of heads): warned about on loading.
    warnings: list[str] = dataclasses.field(default_factory=list)
    rules: list[Rule] = dataclasses.field(default_factory=list)
    checks: list[KeyCheck] = dataclasses.field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{str(self.raw.path)!r} ({self.family.description})"

    def bad(self, status: str) -> list[KeyCheck]:
        return [c for c in self.checks if c.status == status]


def describe(config: ViTConfig) -> str:
    """One-line summary of the architecture."""
    c = config
    return (
        f"hidden {c.hidden_size}, {c.num_layers} layers, {c.num_heads} heads, MLP {c.mlp_dim}, "
        f"patch {c.patch_size[0]}x{c.patch_size[1]}, image {c.image_size[0]}x{c.image_size[1]}, "
        f"{c.channels} channels, {c.num_classes} classes, classifier {c.classifier}"
        + (f", representation {c.representation_size}" if c.representation_size else "")
        + ("" if c.qkv_bias else ", no qkv bias")
    )


def detect_family(raw: RawCheckpoint) -> Family:
    """The naming family of ``raw``'s keys."""
    if raw.container == "jaxvit":
        return OwnFamily(raw.stored_config)
    family = flax_names.detect(raw.tensors) or torch_names.detect(raw.tensors, raw.side)
    if family is None:
        first = ", ".join(sorted(raw.tensors)[:8]) or "none"
        raise CheckpointError(
            f"{str(raw.path)!r}: the tensor names follow no known ViT naming (first keys: "
            f"{first}); expected vit_jax/big_vision ('Transformer/encoderblock_0/...'), timm "
            f"('blocks.0.attn.qkv.weight') or Hugging Face ('vit.embeddings...'). Accepted:\n"
            + accepted_formats()
        )
    return family


def _resolve(defaults: Mapping[str, Any], image_size) -> dict[str, Any]:
    return {k: (v(image_size) if callable(v) else v) for k, v in defaults.items()}


def settle_config(plan: Plan, config: ViTConfig | None) -> None:
    """Fill ``plan.config`` / ``plan.file_config`` (the file's image size) and contradictions.

    Without ``config`` every field comes from the file (or the family's defaults, or a stated
    guess for ``num_heads``); the grid is square unless a side file gives the image size. With
    ``config`` it wins for everything the tensors cannot show (epsilon, GELU form, preprocessing,
    image size, and heads of a fused-qkv file); fields the tensors fix must agree.
    """
    facts = plan.facts
    fields = dict(facts.fields)
    plan.notes.extend(facts.notes)
    if config is None:
        if facts.missing:
            raise CheckpointError(
                f"{plan.where}: cannot read the architecture, missing "
                f"{', '.join(repr(k) for k in facts.missing)}; pass config= to get the full list "
                "of differences"
            )
        if "num_heads" not in fields:
            fields["num_heads"], note = guess_num_heads(fields["hidden_size"], fields["mlp_dim"])
            plan.notes.append(note)
            plan.warnings.append(note)
        grid = facts.grid or square_grid(facts.num_patches, plan.where)
        if facts.grid is None:
            plan.notes.append(f"patch grid {grid[0]}x{grid[1]} assumed square")
        patch = fields["patch_size"]
        image_size = (grid[0] * patch[0], grid[1] * patch[1])
        try:
            plan.config = ViTConfig(
                image_size=image_size, **fields, **_resolve(facts.defaults, image_size)
            )
        except ValueError as e:
            raise CheckpointError(f"{plan.where}: inconsistent architecture: {e}") from e
        plan.file_config = plan.config
        return
    for field in SHAPE_FIELDS:
        if field in fields and getattr(config, field) != fields[field]:
            plan.contradictions.append(
                f"{field}: config has {getattr(config, field)!r}, the checkpoint has "
                f"{fields[field]!r} (from {facts.sources[field]})"
            )
    if facts.grid is not None:
        grid = facts.grid
    elif facts.num_patches is None or facts.num_patches == config.num_patches:
        grid = config.grid
    else:
        grid = square_grid(facts.num_patches, plan.where)
    patch = config.patch_size
    if config.class_names is None and facts.defaults.get("class_names") is not None:
        config = config.replace(class_names=facts.defaults["class_names"])
    plan.config = config
    plan.file_config = config.replace(image_size=(grid[0] * patch[0], grid[1] * patch[1]))
    if plan.file_config.grid != config.grid:
        plan.notes.append(
            f"position embeddings resampled from grid {grid[0]}x{grid[1]} to "
            f"{config.grid[0]}x{config.grid[1]}"
        )


def check_keys(plan: Plan) -> None:
    """Compare the file's keys and shapes with those the model needs, in the file's layout."""
    targets = expected_targets(plan.file_config)
    plan.rules = plan.family.rules(plan.file_config)
    check_coverage(plan.rules, targets)
    expected = expected_sources(plan.rules, targets)
    feeds = {s: rule.targets for rule in plan.rules for s in rule.sources}
    tensors = plan.raw.tensors
    checks = []
    for key, shape in expected.items():
        found = tuple(int(d) for d in tensors[key].shape) if key in tensors else None
        status = "missing" if found is None else ("ok" if found == shape else "mis-shaped")
        checks.append(KeyCheck(key, found, shape, status, feeds[key]))
    for key, array in tensors.items():
        if key not in expected:
            status = "ignored" if plan.family.ignored(key) else "extra"
            checks.append(KeyCheck(key, tuple(int(d) for d in array.shape), None, status))
    plan.checks = checks


def make_plan(path, *, config: ViTConfig | None = None, allow_pickle: bool = False) -> Plan:
    """Read ``path`` and work out the config and key-by-key comparison, converting nothing."""
    raw = read_checkpoint(path, allow_pickle=allow_pickle)
    family = detect_family(raw)
    plan = Plan(raw=raw, family=family, facts=family.facts(raw.tensors))
    settle_config(plan, config)
    if not plan.contradictions:
        check_keys(plan)
    return plan


def _listing(title: str, checks: list[KeyCheck], line) -> list[str]:
    if not checks:
        return []
    out = [f"  {title} ({len(checks)}):"] + [f"    {line(c)}" for c in checks[:MAX_LISTED]]
    if len(checks) > MAX_LISTED:
        out.append(f"    ... and {len(checks) - MAX_LISTED} more (inspect_checkpoint lists all)")
    return out


def raise_if_bad(plan: Plan) -> None:
    """A :class:`CheckpointError` naming every contradiction, or every bad key."""
    if plan.contradictions:
        raise CheckpointError(
            f"{plan.where}: the config given contradicts the checkpoint:\n  "
            + "\n  ".join(plan.contradictions)
        )
    lines = _listing(
        "missing", plan.bad("missing"), lambda c: f"{c.key}  expected {shape_str(c.expected)}"
    )
    lines += _listing("extra", plan.bad("extra"), lambda c: f"{c.key}  found {shape_str(c.found)}")
    lines += _listing(
        "mis-shaped",
        plan.bad("mis-shaped"),
        lambda c: f"{c.key}  expected {shape_str(c.expected)}, found {shape_str(c.found)}",
    )
    if lines:
        raise CheckpointError(
            f"{plan.where} does not fit the model ({describe(plan.file_config)}):\n"
            + "\n".join(lines)
        )


def load_checkpoint(
    path, *, config: ViTConfig | None = None, allow_pickle: bool = False
) -> tuple[ViTConfig, dict[str, Any]]:
    """Load a ViT checkpoint of any supported family as ``(config, params)``.

    Args:
      path: a ``.npz`` (vit_jax, big_vision incl. scanned layers and pre-linen ``opt/target/``),
        a ``.safetensors`` (timm or Hugging Face names; a ``config.json`` /
        ``preprocessor_config.json`` beside it is read), a Hugging Face folder, a folder
        written by :func:`save_checkpoint`, or with ``allow_pickle`` a PyTorch ``.bin`` / ``.pth``.
      config: the architecture, if known. It wins for what tensors cannot show (LayerNorm
        epsilon, GELU form, preprocessing, the number of heads of a timm file) and may ask for
        another image size, which resamples the position embeddings (bilinear on the patch grid,
        CLS row kept). Fields the tensors fix (widths, depth, patch, classes, classifier,
        representation size, qkv bias, and heads where the file shows them) must agree, or a
        :class:`CheckpointError` names the field.
      allow_pickle: PyTorch pickles can run code when loaded, so they are refused unless True.

    Returns:
      ``(config, params)``: the :class:`ViTConfig` and the float32 parameter tree that
      :class:`~jaxvit_interp.model.vit.VisionTransformer` takes under ``"params"``.

    Without ``config`` the architecture is read from tensor shapes: hidden size, depth, MLP
    width, patch size, channels, classes, CLS token or mean pooling, representation layer and
    qkv bias. The patch grid is square unless a side file gives the image size. Heads come
    from the tensors (vit_jax / big_vision), a Hugging Face ``config.json`` or timm hub
    ``config.json``; where none shows them (timm's fused qkv, a bare Hugging Face file) they
    are guessed from a known size or the standard head width 64, with a warning. The family
    fills the rest: vit_jax / big_vision tanh GELU, epsilon 1e-6, inception preprocessing
    (pixels to [-1, 1]); timm exact GELU, epsilon 1e-6, ImageNet mean/std with a bicubic
    resize and centre crop (or the hub config's); Hugging Face from ``config.json``
    (``hidden_act``, ``layer_norm_eps``, image and patch size) and ``preprocessor_config.json``.

    Raises:
      CheckpointError: unknown format or naming, refused pickle, missing / extra / mis-shaped
        tensors (listed by key with expected and found shapes, in the file's layout), or a
        ``config`` that contradicts the tensors. ``inspect_checkpoint`` shows the same
        comparison without raising.
      FileNotFoundError: ``path`` does not exist.
    """
    plan = make_plan(path, config=config, allow_pickle=allow_pickle)
    raise_if_bad(plan)
    for warning in plan.warnings:
        warnings.warn(f"{plan.where}: {warning}", UserWarning, stacklevel=2)
    targets = expected_targets(plan.file_config)
    flat = apply_rules(plan.rules, plan.raw.tensors, targets)
    if plan.file_config.grid != plan.config.grid:
        flat[POSEMB] = np.asarray(
            resample_posemb(
                flat[POSEMB],
                old_grid=plan.file_config.grid,
                new_grid=plan.config.grid,
                num_prefix=int(plan.config.has_cls_token),
            )
        )
    params = unflatten({k: jnp.asarray(v) for k, v in flat.items()})
    return plan.config, params
