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
    DEFAULT_IMAGE_SIDE,
    SHAPE_FIELDS,
    Facts,
    Family,
    canonical_fields,
    guess_num_heads,
    square_grid,
)
from jaxvit_interp.model.checkpoint.files import RawCheckpoint, read_checkpoint
from jaxvit_interp.model.checkpoint.hub import fetch_snapshot, is_hub_name
from jaxvit_interp.model.checkpoint.orbax_io import OwnFamily
from jaxvit_interp.model.checkpoint.posemb import resample_posemb
from jaxvit_interp.model.checkpoint.rules import (
    KINDS,
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
      action: what loading does with it, in words: the conversion, or why it is ignored.
    """

    key: str
    found: tuple[int, ...] | None
    expected: tuple[int, ...] | None
    status: str
    targets: tuple[str, ...] = ()
    action: str = ""


@dataclasses.dataclass
class Plan:
    """Everything known about a checkpoint before converting it."""

    raw: RawCheckpoint
    family: Family
    facts: Facts
    config: ViTConfig | None = None
    file_config: ViTConfig | None = None
    # Why the model is loaded at config.image_size, as a clause ("its config.json says ...").
    size_source: str = ""
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
    extras = [
        f"CLS token {'yes' if c.has_cls_token else 'no'}" if c.class_token is not None else "",
        "distillation token" if c.distillation_token else "",
        "two heads averaged" if c.distillation_head else "",
        f"{c.num_register_tokens} registers" if c.num_register_tokens else "",
        (
            f"positions for {c.position_prefix_tokens} of {c.num_prefix_tokens} special tokens"
            if c.position_prefix_tokens is not None
            else ""
        ),
        "pre-norm" if c.pre_norm else "",
        "layer scale" if c.layer_scale else "",
        c.mlp_activation if c.mlp_activation != "gelu" else "",
        "fc_norm" if c.fc_norm else "",
        f"heads per layer {list(c.heads_per_layer)}" if c.heads_per_layer else "",
        f"representation {c.representation_size}" if c.representation_size else "",
        f"projection {c.projection_dim}" if c.projection_dim else "",
        "" if c.patch_bias else "no patch bias",
        "sin-cos positions" if c.position_embedding == "sincos2d" else "",
        "" if c.qkv_bias else "no qkv bias",
    ]
    classes = f"{c.num_classes} classes" if c.num_classes else "no classifier (backbone)"
    return (
        f"hidden {c.hidden_size}, {c.num_layers} layers, {c.num_heads} heads, MLP {c.mlp_dim}, "
        f"patch {c.patch_size[0]}x{c.patch_size[1]}, image {c.image_size[0]}x{c.image_size[1]}, "
        f"{c.channels} channels, {classes}, classifier {c.classifier}"
        + "".join(f", {e}" for e in extras if e)
    )


def detect_family(raw: RawCheckpoint) -> Family:
    """The naming family of ``raw``'s keys."""
    if raw.stored_config is not None:
        return OwnFamily(raw.stored_config, "orbax" if raw.container == "jaxvit" else raw.container)
    family = flax_names.detect(raw.tensors) or torch_names.detect(raw.tensors, raw.side)
    if family is None:
        first = ", ".join(sorted(raw.tensors)[:8]) or "none"
        raise CheckpointError(
            f"{str(raw.path)!r}: the tensor names follow no known ViT naming (first keys: "
            f"{first}); expected vit_jax/big_vision ('Transformer/encoderblock_0/...'), timm "
            f"('blocks.0.attn.qkv.weight'), OpenCLIP ('visual.conv1.weight') or Hugging Face "
            f"('vit.embeddings...', 'vision_model.embeddings...'). Accepted:\n" + accepted_formats()
        )
    return family


def _resolve(defaults: Mapping[str, Any], image_size) -> dict[str, Any]:
    return {k: (v(image_size) if callable(v) else v) for k, v in defaults.items()}


def settle_config(
    plan: Plan, config: ViTConfig | None, image_size: tuple[int, int] | None = None
) -> None:
    """Fill ``plan.config`` / ``plan.file_config`` (the file's image size) and contradictions.

    Without ``config`` every field comes from the file (or the family's defaults, or a stated
    guess for ``num_heads``); the grid is square unless a side file gives the image size, and
    ``image_size`` (if given) replaces the size the file would load at, with the family's
    preprocessing for it. With ``config`` it wins for everything the tensors cannot show
    (epsilon, GELU form, preprocessing, image size, and heads of a fused-qkv file); fields the
    tensors fix must agree.
    """
    facts = plan.facts
    fields = canonical_fields(facts.fields)
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
        patch = fields["patch_size"]
        source = facts.size_source
        if facts.grid is None and facts.num_patches is None:
            # Nothing in the file fixes the grid (sin-cos positions): a standard size.
            side = DEFAULT_IMAGE_SIDE
            grid = (side // patch[0], side // patch[1])
            plan.notes.append(f"image size {grid[0] * patch[0]}x{grid[1] * patch[1]} assumed")
            source = f"nothing in the file fixes it (sin-cos positions), so {side} is assumed"
        else:
            grid = facts.grid or square_grid(facts.num_patches, plan.where)
            if facts.grid is None:
                plan.notes.append(f"patch grid {grid[0]}x{grid[1]} assumed square")
                source = (
                    f"its position table has {facts.num_patches} patch rows, read as a square "
                    f"{grid[0]}x{grid[1]} grid"
                )
        file_size = (grid[0] * patch[0], grid[1] * patch[1])
        if image_size is not None:
            source = f"image_size {image_size[0]}x{image_size[1]} was asked for"
        else:
            image_size = facts.image_size or file_size
        plan.size_source = source or "the file says so"
        try:
            plan.config = ViTConfig(
                image_size=image_size, **{**_resolve(facts.defaults, image_size), **fields}
            )
            plan.file_config = plan.config.replace(image_size=file_size)
        except ValueError as e:
            raise CheckpointError(f"{plan.where}: inconsistent architecture: {e}") from e
        _note_resampling(plan)
        return
    for field in SHAPE_FIELDS:
        if field in fields and getattr(config, field) != fields[field]:
            plan.contradictions.append(
                f"{field}: config has {getattr(config, field)!r}, the checkpoint has "
                f"{fields[field]!r} (from {facts.sources[field]})"
            )
    num_patches = facts.num_patches
    if facts.table_rows is not None:
        num_patches = facts.table_rows - config.num_position_prefix_rows
    if facts.grid is not None:
        grid = facts.grid
    elif num_patches is None or num_patches == config.num_patches:
        grid = config.grid
    else:
        grid = square_grid(num_patches, plan.where)
    patch = config.patch_size
    if config.class_names is None and facts.defaults.get("class_names") is not None:
        config = config.replace(class_names=facts.defaults["class_names"])
    plan.config = config
    plan.size_source = "the config given says so"
    plan.file_config = config.replace(image_size=(grid[0] * patch[0], grid[1] * patch[1]))
    _note_resampling(plan)


def _note_resampling(plan: Plan) -> None:
    old, new = plan.file_config.grid, plan.config.grid
    if old != new and plan.config.position_embedding == "learned":
        plan.notes.append(
            f"position embeddings resampled from grid {old[0]}x{old[1]} to {new[0]}x{new[1]} "
            f"({plan.config.position_interpolation})"
        )


def check_keys(plan: Plan) -> None:
    """Compare the file's keys and shapes with those the model needs, in the file's layout."""
    targets = expected_targets(plan.file_config)
    plan.rules = plan.family.rules(plan.file_config)
    check_coverage(plan.rules, targets)
    expected = expected_sources(plan.rules, targets)
    tensors = plan.raw.tensors
    feeds = {s: rule for rule in plan.rules for s in rule.sources}
    checks = []
    for key, shape in expected.items():
        found = tuple(int(d) for d in tensors[key].shape) if key in tensors else None
        status = "missing" if found is None else ("ok" if found == shape else "mis-shaped")
        rule = feeds[key]
        action = f"-> {', '.join(rule.targets)} ({KINDS[rule.kind].describe})"
        checks.append(KeyCheck(key, found, shape, status, rule.targets, action))
    for key, array in tensors.items():
        if key not in expected:
            why = plan.family.ignored(key)
            status = "ignored" if why else "extra"
            action = why or "unknown to this family's names"
            checks.append(
                KeyCheck(key, tuple(int(d) for d in array.shape), None, status, (), action)
            )
    plan.checks = checks


def image_size_pair(image_size, config: ViTConfig | None) -> tuple[int, int] | None:
    """``image_size`` (a side, or ``(height, width)``) as a pair of positive ints, or None."""
    if image_size is None:
        return None
    if config is not None:
        raise CheckpointError(
            "give the image size either in config= or as image_size=, not both "
            f"(config has {config.image_size}, image_size={image_size!r})"
        )
    pair = (image_size, image_size) if isinstance(image_size, int | np.integer) else image_size
    try:
        pair = tuple(int(v) for v in pair)
    except (TypeError, ValueError):
        pair = ()
    if len(pair) != 2 or min(pair) < 1:
        raise CheckpointError(
            f"image_size must be a side or (height, width) in pixels, got {image_size!r}"
        )
    return pair


def read_path_or_hub_name(path, allow_pickle: bool) -> RawCheckpoint:
    """Step 1 for a file or folder, or a hub name fetched into the hub's cache first."""
    if is_hub_name(path):
        path = fetch_snapshot(path, allow_pickle=allow_pickle).local_path
    return read_checkpoint(path, allow_pickle=allow_pickle)


def make_plan(
    path,
    *,
    config: ViTConfig | None = None,
    image_size=None,
    allow_pickle: bool = False,
) -> Plan:
    """Read ``path`` (a hub name fetched first) and work out the config and key-by-key
    comparison, converting nothing."""
    size = image_size_pair(image_size, config)
    raw = read_path_or_hub_name(path, allow_pickle)
    return plan_raw(raw, config=config, image_size=size)


def plan_raw(raw: RawCheckpoint, *, config: ViTConfig | None = None, image_size=None) -> Plan:
    """Steps 2-5 for a checkpoint already in memory: family, config and key comparison.

    The one plan a file (:func:`make_plan`) and a live PyTorch module
    (:func:`~jaxvit_interp.model.checkpoint.live.from_torch`) both go through.
    """
    size = image_size_pair(image_size, config)
    family = detect_family(raw)
    plan = Plan(raw=raw, family=family, facts=family.facts(raw.tensors))
    settle_config(plan, config, size)
    if not plan.contradictions:
        check_keys(plan)
    return plan


def load_raw(
    raw: RawCheckpoint, *, config: ViTConfig | None = None, image_size=None
) -> tuple[ViTConfig, dict[str, Any]]:
    """:func:`load_checkpoint` (its ``config`` and ``image_size``) of a checkpoint already read:
    a file's, or a live PyTorch module's (:func:`~.live.from_torch`)."""
    plan = plan_raw(raw, config=config, image_size=image_size)
    params = convert(plan)
    for warning in plan.warnings:
        # stacklevel 3: the user's call of load_checkpoint or from_torch, not this function.
        warnings.warn(f"{plan.where}: {warning}", UserWarning, stacklevel=3)
    return plan.config, params


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


def convert(plan: Plan) -> dict[str, Any]:
    """The parameter tree of a checked plan (:func:`raise_if_bad` first), float32, with the
    position table resampled to ``plan.config``'s grid where it differs from the file's."""
    raise_if_bad(plan)
    targets = expected_targets(plan.file_config)
    flat = apply_rules(plan.rules, plan.raw.tensors, targets)
    if plan.file_config.grid != plan.config.grid and POSEMB in flat:
        flat[POSEMB] = np.asarray(
            resample_posemb(
                flat[POSEMB],
                old_grid=plan.file_config.grid,
                new_grid=plan.config.grid,
                num_prefix=plan.config.num_position_prefix_rows,
                method=plan.config.position_interpolation,
            )
        )
    return unflatten({k: jnp.asarray(v) for k, v in flat.items()})


def load_checkpoint(
    path,
    *,
    config: ViTConfig | None = None,
    image_size=None,
    allow_pickle: bool = False,
) -> tuple[ViTConfig, dict[str, Any]]:
    """Load a ViT checkpoint of any supported family as ``(config, params)``.

    Args:
      path: a ``.npz`` (vit_jax, big_vision incl. scanned layers, pre-linen ``opt/target/`` and
        SigLIP's ``params/img/`` tower), a ``.safetensors`` (timm, Hugging Face or OpenCLIP
        names; a ``config.json`` / ``preprocessor_config.json`` / ``open_clip_config.json``
        beside it is read), a Hugging Face folder, a folder written by
        :func:`save_checkpoint`, or with ``allow_pickle`` a PyTorch ``.bin`` / ``.pth``. Or a
        hub name, ``"hf-hub:ORG/NAME"`` or ``"hf-hub:ORG/NAME@REVISION"``: a Hugging Face,
        timm or OpenCLIP repository, of which only the files read are fetched into
        huggingface_hub's cache (which ``HF_HOME`` / ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and
        ``HF_TOKEN`` steer; :mod:`.hub`), then loaded as that folder.
      config: the architecture, if known. It wins for what tensors cannot show (LayerNorm
        epsilon, GELU form, preprocessing, the number of heads of a timm file) and may ask for
        another image size, which resamples the learned position table's patch rows as the
        family's own library does (``position_interpolation``: bilinear for vit_jax and
        big_vision, PyTorch's bicubic for Hugging Face, with antialiasing for timm, OpenCLIP and
        DINOv2 with registers; special-token rows kept). Fields the tensors fix (widths, depth,
        patch, classes, pooling, special tokens, layer scale, SwiGLU, norms, projections, qkv
        bias, and heads where the file shows them) must agree, or a :class:`CheckpointError`
        names the field.
      image_size: a side or ``(height, width)``: load the file's own model (no ``config``) at
        this size instead of the one it says, its position table resampled and the family's
        preprocessing for that size (e.g. a DINOv2 folder without a processor config at 224
        rather than its table's 518).
      allow_pickle: PyTorch pickles can run code when loaded, so they are refused unless True.

    Returns:
      ``(config, params)``: the :class:`ViTConfig` and the float32 parameter tree that
      :class:`~jaxvit_interp.model.vit.VisionTransformer` takes under ``"params"``.

    Without ``config`` the architecture is read from tensor shapes: hidden size, depth, MLP
    width and kind, patch size, channels, classes (none for a backbone), pooling, special tokens,
    layer scale, norms, representation layer, projection and biases. The patch grid is square
    unless a side file gives the image size (a DINOv2 folder's processor sets 224; sin-cos
    models, which store no table, assume 224). Heads come from the tensors (vit_jax /
    big_vision), a Hugging Face, timm hub (its ``model_args``, or its architecture name's size
    where the widths are that size's) or OpenCLIP config; where none shows them (timm's fused
    qkv, a bare Hugging Face file) they are guessed from a known size or the standard head
    width 64, with a warning. The family fills the rest: vit_jax / big_vision tanh GELU,
    epsilon 1e-6, inception preprocessing (pixels to [-1, 1]); timm exact GELU, epsilon 1e-6
    (CLIP 1e-5), each sub-family's published mean/std with a bicubic resize and centre crop (or
    the hub config's); Hugging Face from ``config.json`` (``hidden_act``, ``layer_norm_eps``,
    image and patch size) and ``preprocessor_config.json``, else the model type's published
    processor; OpenCLIP epsilon 1e-5, CLIP's preprocessing, GELU unless its config says
    QuickGELU.

    Raises:
      CheckpointError: unknown format or naming, refused pickle, missing / extra / mis-shaped
        tensors (listed by key with expected and found shapes, in the file's layout), or a
        ``config`` that contradicts the tensors; for a hub name also a repository not found,
        gated or offline and not cached, or an unsupported architecture (told from its
        ``config.json`` before the weights are downloaded). ``inspect_checkpoint`` shows the same
        comparison without raising.
      FileNotFoundError: ``path`` does not exist.
    """
    size = image_size_pair(image_size, config)  # before reading: a bad size fails at once
    raw = read_path_or_hub_name(path, allow_pickle)
    return load_raw(raw, config=config, image_size=size)
