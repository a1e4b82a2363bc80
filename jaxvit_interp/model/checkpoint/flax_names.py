"""The Google JAX families: ``vit_jax`` and ``big_vision`` parameter names.

``vit_jax`` (github.com/google-research/vision_transformer) uses the names of
:mod:`jaxvit_interp.model.vit` itself, so its map is the identity. Its pre-linen checkpoints keep
the same names under the optimizer's ``opt/target/`` prefix.

``big_vision`` differs in four places: the block's modules are numbered ``LayerNorm_0``,
``MultiHeadDotProductAttention_0``, ``LayerNorm_1``, ``MlpBlock_0``; the position embeddings
are the top-level ``pos_embedding`` and cover only the patches (they are added before the CLS
token is prepended, so the CLS token gets none); a model trained with ``scan`` stores all blocks
as one ``Transformer/encoderblock/...`` array per parameter with a leading layer axis; and files
may sit under ``params/`` (or ``params/img/`` for an image tower, as SigLIP's ``.npz`` holds it
beside the text tower). There is no ``cls`` when the pooling is ``gap`` or ``map``; the
attention-pooling head ``MAPHead_0`` (SigLIP) keeps its own names, which are this model's too.
A model with ``posemb="sincos2d"`` stores no position table: its fixed sin-cos table is computed
for whatever grid the model runs on.  An image tower without ``head`` is a backbone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from jaxvit_interp.model.checkpoint.facts import Facts, ShapeReader, class_names_fact
from jaxvit_interp.model.checkpoint.rules import Rule, expected_targets, identity_rules
from jaxvit_interp.model.config import INCEPTION_PREPROCESSING, ViTConfig

# Optimizer / model-bundle prefixes, longest first so "params/img/" wins over "params/".
PREFIXES: tuple[str, ...] = ("", "opt/target/", "params/img/", "params/")

# This model's block module names -> big_vision's.
BIG_VISION_BLOCK = {
    "LayerNorm_0": "LayerNorm_0",
    "MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0",
    "LayerNorm_2": "LayerNorm_1",
    "MlpBlock_3": "MlpBlock_0",
}
POSEMB = "Transformer/posembed_input/pos_embedding"
_BLOCK = re.compile(r"^Transformer/encoderblock_(\d+)/(.*)$")

# vit_jax and big_vision train with tanh GELU and LayerNorm epsilon 1e-6, on pixels in [-1, 1].
DEFAULTS = dict(layer_norm_eps=1e-6, gelu_approximate=True, preprocessing=INCEPTION_PREPROCESSING)


class FlaxFamily:
    """``vit_jax`` / ``big_vision`` names under ``prefix``; ``name`` picks the variant."""

    def __init__(self, name: str, prefix: str = ""):
        assert name in ("vit_jax", "big_vision", "big_vision_scan"), name
        self.name, self.prefix = name, prefix
        self.big_vision = name.startswith("big_vision")
        self.scan = name == "big_vision_scan"
        label = {
            "vit_jax": "vit_jax" + (" (pre-linen)" if prefix == "opt/target/" else ""),
            "big_vision": "big_vision",
            "big_vision_scan": "big_vision (scanned layers)",
        }[name]
        self.description = label + (f" under {prefix!r}" if prefix else "")

    def _block(self, module: str) -> str:
        return BIG_VISION_BLOCK[module] if self.big_vision else module

    def _block_prefix(self) -> str:
        return "Transformer/encoderblock/" if self.scan else "Transformer/encoderblock_0/"

    def facts(self, tensors: Mapping[str, np.ndarray]) -> Facts:
        facts = Facts(defaults=dict(DEFAULTS))
        r = ShapeReader(tensors, facts, self.prefix)
        lead = 1 if self.scan else 0  # the stacked layer axis
        block = self._block_prefix()
        mha = block + self._block("MultiHeadDotProductAttention_1") + "/"
        mlp = block + self._block("MlpBlock_3") + "/"

        if (s := r.shape("embedding/kernel")) is not None:  # [ph, pw, C, D]
            r.set("patch_size", (s[0], s[1]), "embedding/kernel")
            r.set("channels", s[2], "embedding/kernel")
            r.set("hidden_size", s[3], "embedding/kernel")
        if self.scan:
            if (s := r.shape(block + "LayerNorm_0/scale")) is not None:
                r.set("num_layers", s[0], block + "LayerNorm_0/scale")
        else:
            r.count_layers("Transformer/encoderblock_{i}/")
        if (s := r.shape(mha + "query/kernel")) is not None:  # [(L,) D, H, head_dim]
            r.set("num_heads", s[lead + 1], mha + "query/kernel")
        r.set(
            "qkv_bias", r.has(mha + "query/bias"), how=f"presence of {self.prefix + mha}query/bias"
        )
        if (s := r.shape(mlp + "Dense_0/kernel")) is not None:
            r.set("mlp_dim", s[-1], mlp + "Dense_0/kernel")
        r.set(
            "num_classes",
            r.shape("head/kernel")[-1] if r.has("head/kernel") else 0,
            how=f"shape of {self.prefix}head/kernel (none: a backbone)",
        )
        has_rep = r.has("pre_logits/kernel")
        r.set(
            "representation_size",
            r.shape("pre_logits/kernel")[-1] if has_rep else None,
            how=f"presence of {self.prefix}pre_logits/kernel",
        )
        has_cls = r.has("cls")
        has_map = r.has("MAPHead_0/probe")
        classifier = "map" if has_map else ("token" if has_cls else "gap")
        how = f"presence of {self.prefix}MAPHead_0/probe and {self.prefix}cls"
        r.set("classifier", classifier, how=how)
        r.set("class_token", has_cls, how=f"presence of {self.prefix}cls")
        r.set("patch_bias", r.has("embedding/bias"), how=f"presence of {self.prefix}embedding/bias")
        r.set_all(
            "vit_jax and big_vision ViTs have no such option",
            distillation_token=False,
            distillation_head=False,
            num_register_tokens=0,
            pre_norm=False,
            layer_scale=False,
            fc_norm=False,
            projection_dim=None,
            position_prefix_tokens=None,
        )
        posemb = "pos_embedding" if self.big_vision else POSEMB
        if r.has(posemb):
            r.set("position_embedding", "learned", how=f"presence of {self.prefix}{posemb}")
            # vit_jax's table has a CLS row; big_vision's never does.
            facts.num_patches = r.shape(posemb)[1] - int(has_cls and not self.big_vision)
        elif self.big_vision:
            r.set("position_embedding", "sincos2d", how=f"no {self.prefix}pos_embedding")
            facts.notes.append(
                "no position table: big_vision's fixed 2-D sin-cos embeddings (posemb="
                "'sincos2d'), computed for the model's grid"
            )
        else:
            r.shape(posemb)  # reported missing
        class_names_fact(facts, None, self.description)
        return facts

    def rules(self, config: ViTConfig) -> list[Rule]:
        targets = expected_targets(config)
        if not self.big_vision:
            return identity_rules(targets, self.prefix)
        rules, stacked = [], {}
        for target in targets:
            if target == POSEMB:
                kind = "posemb_add_cls" if config.has_cls_token else "same"
                rules.append(Rule((self.prefix + "pos_embedding",), (target,), kind))
            elif m := _BLOCK.match(target):
                module, _, rest = m.group(2).partition("/")
                name = f"{self._block(module)}/{rest}"
                if self.scan:
                    stacked.setdefault(name, {})[int(m.group(1))] = target
                else:
                    source = f"Transformer/encoderblock_{m.group(1)}/{name}"
                    rules.append(Rule((self.prefix + source,), (target,)))
            else:
                rules.append(Rule((self.prefix + target,), (target,)))
        for name, by_layer in stacked.items():
            layers = tuple(by_layer[i] for i in range(len(by_layer)))
            rules.append(
                Rule((self.prefix + "Transformer/encoderblock/" + name,), layers, "stacked")
            )
        return rules

    def ignored(self, key: str) -> str | None:
        if self.prefix and not key.startswith(self.prefix):
            return "outside the image model's prefix (optimizer state, another tower)"
        return None


def detect(keys) -> FlaxFamily | None:
    """The vit_jax / big_vision variant and prefix of a flat key set, or None if neither."""
    keys = list(keys)
    for prefix in sorted(PREFIXES, key=len, reverse=True):
        inner = [k[len(prefix) :] for k in keys if k.startswith(prefix)]
        if not any(k.startswith("Transformer/") for k in inner):
            continue
        if any(k.startswith("Transformer/encoderblock/") for k in inner):
            return FlaxFamily("big_vision_scan", prefix)
        big_vision_block = any(
            k.startswith("Transformer/encoderblock_") and "/MultiHeadDotProductAttention_0/" in k
            for k in inner
        )
        if "pos_embedding" in inner or big_vision_block:
            return FlaxFamily("big_vision", prefix)
        return FlaxFamily("vit_jax", prefix)
    return None
