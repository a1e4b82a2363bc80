"""Mean and resample ablation: every engine equal to one plain forward pass per ablation with
the head's output replaced, against the NumPy reference forward pass (``reference_vit``), on
families with registers, a distillation token and mean pooling; fresh random reference images
each run."""

from __future__ import annotations

import numpy as np
import pytest
from families import CASES, SMALL  # noqa: I001  (tests/model is on sys.path via conftest)
from reference_vit import reference_forward

from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution
from jaxvit_interp.importance import (
    ablate,
    direct_logit_attribution,
    engine,
    head_importance,
    head_shapley,
    kernels,
    pairwise_interactions,
    partial_pruning,
    pruning_curves,
    set_engine,
)
from jaxvit_interp.model import PRUNING_MODES
from jaxvit_interp.model.edits import keep_mask
from jaxvit_interp.pipeline.prune import choose_heads

KINDS = ("mean", "resample")
# Batches of two images: three images make two (the second padded), and every test's programs
# have the same shapes, so a family's programs compile once for the file.
TWO = Execution(batch_size=2, progress=False)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class Reference:
    """Plain forward passes of the NumPy reference model, one image and one ablation at a time.

    Replacing head ``(l, h)``'s output by ``r`` is its head mask at 0 and ``r`` added to its
    output; ``r`` comes from the clean passes of the reference images: their mean
    (``"mean"``), or reference image ``i``'s own for image ``i`` (``"resample"``).
    """

    def __init__(self, config, params, images, kind, reference):
        self.config, self.params, self.images, self.kind = config, params, images, kind
        self.reference = reference
        clean = [self.run(image) for image in images]
        self.logits = np.stack([c[0] for c in clean])  # [image, class]
        self.blocks = np.stack([c[2]["block_outputs"] for c in clean])  # [image, L, N, D]
        self.labels = self.logits.argmax(-1)
        self.tables = np.stack([self.run(image)[2]["mixed"] for image in reference])
        self.means = {}  # the mean parts (see part), each computed once

    def run(self, image, **kwargs):
        return reference_forward(self.config, self.params, image, details=True, **kwargs)

    def replacement(self, i: int, layer: int, head: int) -> np.ndarray:
        """``r`` of head ``(layer, head)`` on image ``i`` ``[N, head_dim]``."""
        if self.kind == "mean":
            return self.tables[:, layer, head].mean(axis=0)
        return self.tables[i, layer, head]

    def part(self, i: int, layer: int, head: int, zeroed: np.ndarray) -> np.ndarray:
        """The share of head ``(layer, head)``'s output that its attention entries ``zeroed``
        ``[N, N]`` (1 where zeroed) carry on the reference images, as :meth:`replacement`."""
        L, H = self.config.num_layers, self.config.num_heads
        keep = np.ones((L, H, *zeroed.shape))
        keep[layer, head] = zeroed  # only that part of the head's attention is left

        def share(image):
            return self.run(image, keep=keep)[2]["mixed"][layer, head]

        if self.kind == "resample":
            return share(self.reference[i])
        key = (layer, head, zeroed.tobytes())
        if key not in self.means:
            self.means[key] = np.mean([share(image) for image in self.reference], axis=0)
        return self.means[key]

    def ablated(self, i: int, heads, keep=None, add=None):
        """``(probs [class], block outputs [L, N, D])`` of image ``i`` with ``heads`` replaced
        (or, with ``keep`` and ``add``, the given edit)."""
        L, H = self.config.num_layers, self.config.num_heads
        mask = np.ones((L, H))
        if add is None:
            add = {}
            for layer, head in heads:
                mask[layer, head] = 0.0
                add[(layer, head)] = self.replacement(i, layer, head)
        logits, _, more = self.run(self.images[i], head_mask=mask, keep=keep, add=add)
        return _softmax(logits), more["block_outputs"]

    def metrics(self, i: int, probs: np.ndarray, blocks: np.ndarray, layer: int) -> dict:
        """``prob``, ``kl`` and ``layer`` of one ablation of image ``i`` (``layer``: the
        lowest pruned layer)."""
        p = _softmax(self.logits[i])
        y = self.labels[i]
        full = self.blocks[i, layer]
        change = np.linalg.norm(full - blocks[layer]) / np.linalg.norm(full)
        return {"prob": probs[y], "kl": (p * (np.log(p) - np.log(probs))).sum(), "layer": change}


def _model(case, rng, random_model, random_images, kind, count=3):
    config, params = random_model(int(rng.integers(1 << 30)), **SMALL, **CASES[case])
    images = random_images(config, count, int(rng.integers(1 << 30)))
    # A mean reads any number of reference images (here one more); resample one per image.
    size = count + 1 if kind == "mean" else count
    reference = random_images(config, size, int(rng.integers(1 << 30)))
    return config, params, images, reference


def _close(got, want, what):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5, err_msg=what)


def _check_single_heads(got, ref: Reference, metrics) -> None:
    """Every head of every image of ``got`` against ``ref``'s pass with that head replaced."""
    for i in range(len(ref.images)):
        for layer in range(ref.config.num_layers):
            for head in range(ref.config.num_heads):
                want = ref.metrics(i, *ref.ablated(i, [(layer, head)]), layer)
                for m in metrics:
                    _close(got[m][i, layer, head], want[m], f"{m} image {i} head {(layer, head)}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", ["deit_distilled", "dinov2_registers_swiglu", "mae_gap_fc_norm"])
def test_single_heads_equal_one_pass_per_head(case, kind, rng, random_model, random_images):
    config, params, images, reference = _model(case, rng, random_model, random_images, kind)
    got = head_importance(
        config,
        params,
        images,
        metrics=("prob", "kl", "layer"),
        ablation=kind,
        reference=reference,
        execution=TWO,
    )
    _check_single_heads(got, Reference(config, params, images, kind, reference), got.metrics)


def test_mean_defaults_to_the_analysed_images(rng, random_model, random_images):
    config, params, images, _ = _model("deit_distilled", rng, random_model, random_images, "mean")
    got = head_importance(config, params, images, metrics=("prob",), ablation="mean", execution=TWO)
    _check_single_heads(got, Reference(config, params, images, "mean", images), ("prob",))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", ["deit_distilled", "dinov2_registers_swiglu"])
def test_head_sets_equal_one_pass_per_set(case, kind, rng, random_model, random_images):
    """Sets across layers run as a tree of streams; each replaces every one of its heads."""
    config, params, images, reference = _model(case, rng, random_model, random_images, kind)
    sets = [[(0, 1)], [(0, 0), (2, 1)], [(1, 1), (2, 0), (2, 1)], [(0, 1), (1, 0)], [(2, 0)]]
    got = ablate(
        config,
        params,
        images,
        sets,
        metrics=("prob", "kl", "layer"),
        ablation=kind,
        reference=reference,
        execution=TWO,
    )
    ref = Reference(config, params, images, kind, reference)
    for i in range(len(images)):
        for s, heads in enumerate(sets):
            lowest = min(layer for layer, _ in heads)
            for m, value in ref.metrics(i, *ref.ablated(i, heads), lowest).items():
                _close(got[m][i, s], value, f"{m} image {i} set {heads}")


@pytest.mark.parametrize("kind", KINDS)
def test_partial_pruning_replaces_the_zeroed_share(kind, rng, random_model, random_images):
    """Each mode's zeroed attention entries' share of the head's output is replaced by the
    same share on the reference images; the ``head`` mode is the whole head."""
    case = "dinov2_registers_swiglu"
    config, params, images, reference = _model(case, rng, random_model, random_images, kind, 2)
    heads = [(1, 0), (2, 1)]
    got = partial_pruning(
        config,
        params,
        images,
        heads=heads,
        top_k=2,
        ablation=kind,
        reference=reference,
        execution=TWO,
    )
    assert got.modes == PRUNING_MODES
    ref = Reference(config, params, images, kind, reference)
    L, H, N = config.num_layers, config.num_heads, config.num_tokens
    for i in range(len(images)):
        for j, (layer, head) in enumerate(heads):
            for k, mode in enumerate(PRUNING_MODES):
                kept = keep_mask(mode, N, config.has_cls_token, config.num_prefix_tokens)
                keep = np.ones((L, H, N, N))
                keep[layer, head] = kept
                add = {(layer, head): ref.part(i, layer, head, 1.0 - kept)}
                probs, _ = ref.ablated(i, heads=(), keep=keep, add=add)
                _close(got.prob[i, j, k], probs[ref.labels[i]], f"image {i} {mode} {(layer, head)}")
    whole = head_importance(
        config, params, images, metrics=("prob",), ablation=kind, reference=reference
    )
    for j, (layer, head) in enumerate(heads):
        column = PRUNING_MODES.index("head")
        _close(got.prob[:, j, column], whole.prob[:, layer, head], f"head mode {(layer, head)}")


@pytest.mark.parametrize("kind", KINDS)
def test_interactions_and_curves_replace_alike(kind, rng, random_model, random_images):
    config, params, images, reference = _model(
        "deit_distilled", rng, random_model, random_images, kind
    )
    heads = [(0, 1), (1, 0), (2, 1)]
    pairs = pairwise_interactions(
        config, params, images, heads, ablation=kind, reference=reference, execution=TWO
    )
    ref = Reference(config, params, images, kind, reference)
    for a in range(len(heads)):
        for b in range(a + 1, len(heads)):
            lowest = min(heads[a][0], heads[b][0])
            for i in range(len(images)):
                probs, blocks = ref.ablated(i, [heads[a], heads[b]])
                want = ref.metrics(i, probs, blocks, lowest)
                p = _softmax(ref.logits[i])[ref.labels[i]]
                _close(pairs.pair["prob_drop"][i, a, b], p - want["prob"], f"pair {a} {b}")
                _close(pairs.pair["kl"][i, b, a], want["kl"], f"pair {a} {b}")
    curves = pruning_curves(
        config,
        params,
        images,
        orders=("random",),
        random_orders=1,
        max_heads=3,
        ablation=kind,
        reference=reference,
        execution=TWO,
    )
    order = [tuple(h) for h in curves["random"].heads[0]]
    for k in range(1, 4):
        want = np.mean([ref.ablated(i, order[:k])[0][ref.labels[i]] for i in range(len(images))])
        _close(curves["random"].mean_prob[0, k], want, f"{k} heads removed")


def test_a_new_reference_set_compiles_nothing_new(rng, random_model, random_images):
    """The replacement is data: other reference images (another mean, other pairs) reuse every
    compiled program of both engines."""
    config, params, images, _ = _model("deit_distilled", rng, random_model, random_images, "mean")
    programs = (engine.ablation_batch, kernels.clean_slot_mixed, set_engine._layer_step)
    for kind in KINDS:
        sizes = None
        for _ in range(2):
            reference = random_images(config, len(images), int(rng.integers(1 << 30)))
            options = dict(ablation=kind, reference=reference, execution=TWO)
            head_importance(config, params, images, metrics=("prob", "kl", "layer"), **options)
            ablate(config, params, images, [[(0, 1), (2, 0)]], **options)
            now = [p._cache_size() for p in programs]
            assert sizes is None or now == sizes, kind
            sizes = now


# --------------------------------------------------------------------------------------------
# Bad input: one clear error before any model work.
# --------------------------------------------------------------------------------------------


def _calls(config, params, images):
    """Every public function that takes a reference, as ``call(ablation, reference)``."""
    return {
        "head_importance": lambda a, r: head_importance(
            config, params, images, ablation=a, reference=r, execution=TWO
        ),
        "partial_pruning": lambda a, r: partial_pruning(
            config, params, images, top_k=2, ablation=a, reference=r, execution=TWO
        ),
        "ablate": lambda a, r: ablate(
            config, params, images, [[(0, 1)]], ablation=a, reference=r, execution=TWO
        ),
        "pairwise_interactions": lambda a, r: pairwise_interactions(
            config, params, images, [(0, 0), (2, 1)], ablation=a, reference=r, execution=TWO
        ),
        "pruning_curves": lambda a, r: pruning_curves(
            config, params, images, orders=("random",), ablation=a, reference=r, execution=TWO
        ),
    }


def test_bad_references_are_refused_by_name_before_any_work(
    no_model_work, random_model, random_images
):
    config, params = random_model(0, **SMALL, **CASES["deit_distilled"])
    images = random_images(config, 3, 0)
    other = random_images(config, 5, 1)
    bad = {
        "wrong size": (
            "mean",
            np.zeros((2, 8, 8, 3), np.float32),
            r"reference have the wrong size: shape \(2, 8, 8, 3\).*\[batch, 8, 12, 3\]",
        ),
        "wrong channels": (
            "resample",
            np.zeros((3, 8, 12, 1), np.float32),
            r"reference have the wrong channel count: shape \(3, 8, 12, 1\)",
        ),
        "not images": ("mean", np.zeros((8, 12, 3)), r"reference have shape \(8, 12, 3\)"),
        "NaN": ("mean", np.full((1, 8, 12, 3), np.nan), r"1 image\(s\) of reference contain NaN"),
        "too few": (
            "resample",
            other[:2],
            r"reference has 2 images and there are 3 to analyse: ablation='resample' pairs "
            r"image i with reference\[i\], so it needs exactly 3$",
        ),
        "too many": (
            "resample",
            other,
            r"reference has 5 images.*exactly 3 \(to use the first 3, pass reference\[:3\]\)",
        ),
        "none": ("resample", None, r"ablation='resample' .* pass reference=, one image per"),
        "with zero": ("zero", other[:3], r"reference images were given with ablation='zero'"),
    }
    for name, call in _calls(config, params, images).items():
        for what, (kind, reference, match) in bad.items():
            with pytest.raises(InputError, match=match):
                call(kind, reference)
                pytest.fail(f"{name}: {what} was accepted")


def test_prune_refuses_kinds_it_cannot_bake_in(no_model_work, random_model, random_images):
    config, params = random_model(0, **SMALL, **CASES["deit_distilled"])
    images = random_images(config, 3, 0)
    for kind in KINDS:
        with pytest.raises(InputError, match=rf"ablation='{kind}' cannot be baked.*zero only"):
            choose_heads(config, params, images, None, remove=1, ablation=kind, execution=TWO)


@pytest.mark.parametrize("kind", KINDS)
def test_direct_attribution_and_shapley_take_the_reference(kind, rng, random_model, random_images):
    """The analyses built on the engines pass the reference on: direct logit attribution's
    ablation drop and an exact Shapley game over two heads, against the reference passes."""
    config, params, images, reference = _model(
        "dinov2_registers_swiglu", rng, random_model, random_images, kind
    )
    ref = Reference(config, params, images, kind, reference)
    L, H = config.num_layers, config.num_heads
    direct = direct_logit_attribution(
        config, params, images, ablation=kind, reference=reference, execution=TWO
    )
    for i in range(len(images)):
        y = ref.labels[i]
        for layer in range(L):
            for head in range(H):
                mask = np.ones((L, H))
                mask[layer, head] = 0.0
                add = {(layer, head): ref.replacement(i, layer, head)}
                logits = ref.run(images[i], head_mask=mask, add=add)[0]
                _close(
                    direct.ablation_drop[i, layer, head],
                    ref.logits[i, y] - logits[y],
                    f"logit drop image {i} head {(layer, head)}",
                )
    players = [(0, 0), (L - 1, H - 1)]
    shapley = head_shapley(
        config,
        params,
        images,
        heads=players,
        exact=True,
        ablation=kind,
        reference=reference,
        execution=TWO,
    )
    clean = np.array([_softmax(ref.logits[i])[ref.labels[i]] for i in range(len(images))])
    alone = [
        np.array([ref.ablated(i, [p])[0][ref.labels[i]] for i in range(len(images))])
        for p in players
    ]
    both = np.array([ref.ablated(i, players)[0][ref.labels[i]] for i in range(len(images))])
    # Two players: phi_a = (v(a) + v(ab) - v(b)) / 2, with v(S) = mean(p_clean - p_S).
    v = lambda probs: float(np.mean(clean - probs))  # noqa: E731
    want = [(v(alone[0]) + v(both) - v(alone[1])) / 2, (v(alone[1]) + v(both) - v(alone[0])) / 2]
    got = [shapley.values[p] for p in players]
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
