"""Result objects print short: a few lines of shapes, metrics and headline numbers, checked
against NumPy on fresh random results of full size, and the same rows as a notebook table."""

from __future__ import annotations

import html.parser

import numpy as np
import pytest
from PIL import Image

from jaxvit_interp import (
    AutoencoderSettings,
    HeadImportance,
    PartialPruning,
    ResultsBundle,
    SetAblation,
    class_specific_heads,
    global_importance,
    load_image_folder,
    per_class_importance,
)
from jaxvit_interp.importance.interactions import HeadInteractions
from jaxvit_interp.importance.pruning import PruningCurve
from jaxvit_interp.model import ViTConfig
from jaxvit_interp.patterns.embed import PatternEmbedding
from jaxvit_interp.patterns.train import TrainedAutoencoder
from jaxvit_interp.quantities import METRIC_NAMES
from jaxvit_interp.rollout import FinalRollout
from jaxvit_interp.site.synthetic import synthetic_bundle
from jaxvit_interp.strength.aggregate import StrengthResults, summarize
from jaxvit_interp.strength.kernels import HopStrength

# A ViT-B/16-sized result over 1,000 images: its arrays printed whole ran to 32,131 characters.
IMAGES, LAYERS, HEADS, CLASSES = 1000, 12, 12, 10
MOST_CHARACTERS, MOST_LINES = 600, 8


class _Table(html.parser.HTMLParser):
    """The caption and the (header, cell) rows of one HTML table, as text."""

    def __init__(self, markup: str):
        super().__init__()
        self.tags, self.caption, self.rows, self._text = [], "", [], None
        self.feed(markup)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag in ("caption", "th", "td"):
            self._text = ""

    def handle_data(self, data):
        if self._text is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "caption":
            self.caption = self._text
        elif tag == "th":
            self.rows.append([self._text])
        elif tag == "td":
            self.rows[-1].append(self._text)
        if tag in ("caption", "th", "td"):
            self._text = None


def check_summary(result, *headlines: str) -> str:
    """``repr(result)`` is a few short lines naming the class, holding each of ``headlines``;
    ``_repr_html_`` is a table of the same rows. Returns the repr."""
    text = repr(result)
    lines = text.splitlines()
    assert len(text) <= MOST_CHARACTERS and len(lines) <= MOST_LINES, (len(text), text)
    assert lines[0].startswith(f"{type(result).__name__}: "), text
    for needle in headlines:
        assert needle in text, (needle, text)
    table = _Table(result._repr_html_())
    assert table.tags[0] == "table" and "script" not in table.tags
    assert table.caption == lines[0]
    width = max(len(label) for label, _ in table.rows)
    assert [f"  {label.ljust(width)}  {text}" for label, text in table.rows] == lines[1:]
    return text


def g3(value) -> str:
    return f"{float(value):.3g}"


def random_importance(rng) -> HeadImportance:
    shape = (IMAGES, LAYERS, HEADS)
    metrics = {m: rng.normal(size=shape).astype(np.float32) for m in METRIC_NAMES}
    metrics["flip"] = rng.random(shape) < 0.1
    metrics["prob_drop"][rng.random(shape) < 0.01] = np.nan  # a value that could not be had
    probs = rng.dirichlet(np.ones(CLASSES), IMAGES).astype(np.float32)
    return HeadImportance(
        **metrics,
        probs=probs,
        predictions=probs.argmax(1).astype(np.int32),
        labels=rng.integers(0, CLASSES, IMAGES).astype(np.int32),
        labels_are_predictions=False,
        metrics=tuple(METRIC_NAMES),
    )


def test_head_importance_names_its_shape_accuracy_and_most_important_heads(rng):
    result = random_importance(rng)
    mean = np.nanmean(result.prob_drop.astype(np.float64), axis=0)
    first = np.unravel_index(np.argmax(mean), mean.shape)
    check_summary(
        result,
        "1,000 images x 12 layers x 12 heads",
        ", ".join(METRIC_NAMES),
        f"given; unpruned accuracy {g3((result.predictions == result.labels).mean())}",
        f"by mean prob_drop: ({first[0]}, {first[1]}) {g3(mean[first])},",
    )
    means = global_importance(result)
    check_summary(means, "means over 1,000 images, 12 layers x 12 heads")
    by_class = per_class_importance(result)
    counts = np.bincount(result.labels)
    check_summary(by_class, f"{counts.min():,} to {counts.max():,} a class")
    heads = class_specific_heads(result, "prob_drop")
    best = heads.specificity.reshape(len(heads.classes), -1).max(axis=1)
    k = int(np.argmax(best))
    check_summary(heads, f"class {heads.classes[k]}: ", g3(best[k]))


def test_partial_pruning_and_set_ablations_name_their_headline_numbers(rng):
    modes = ("none", "head", "cls", "patch_to_patch", "cls_patch", "cls_to_cls")
    n, k = 64, LAYERS * HEADS
    prob = rng.random((n, k, len(modes))).astype(np.float32)
    probs = rng.dirichlet(np.ones(CLASSES), n).astype(np.float32)
    partial = PartialPruning(
        heads=np.stack(np.unravel_index(np.arange(k), (LAYERS, HEADS)), 1),
        modes=modes,
        prob=prob,
        top_classes=rng.integers(0, CLASSES, (n, k, len(modes), 5)),
        top_probs=rng.random((n, k, len(modes), 5)).astype(np.float32),
        probs=probs,
        predictions=probs.argmax(1),
        labels=probs.argmax(1),
        labels_are_predictions=True,
    )
    check_summary(
        partial, "64 images x 144 heads x 6 modes", f"patch_to_patch {g3(prob[:, :, 3].mean())}"
    )

    sets = 120
    pruned = rng.integers(0, CLASSES, (n, sets))
    drop = rng.normal(size=(n, sets)).astype(np.float32)
    labels = rng.integers(0, CLASSES, n)
    ablation = SetAblation(
        head_masks=np.ones((sets, LAYERS, HEADS), np.float32),
        prob=None,
        prob_drop=drop,
        kl=np.abs(drop),
        layer=None,
        repr=None,
        flip=None,
        predictions_pruned=pruned,
        probs=probs,
        predictions=probs.argmax(1),
        labels=labels,
        labels_are_predictions=False,
        metrics=("prob_drop", "kl"),
    )
    accuracy = (pruned == labels[:, None]).mean(0)
    worst = int(np.argmax(drop.mean(0)))
    check_summary(
        ablation,
        "64 images x 120 sets",
        f"{g3(accuracy.min())} to {g3(accuracy.max())} with a set pruned",
        f"{g3(drop.mean(0)[worst])} at most (set {worst})",
    )


def test_curves_and_interactions_name_what_can_go_and_which_pairs_stand_out(rng):
    runs, count = 3, LAYERS * HEADS
    accuracy = np.minimum.accumulate(rng.random((runs, count + 1)), axis=1)
    curve = PruningCurve("random", np.zeros((runs, count, 2), int), accuracy, accuracy)
    check_summary(
        curve,
        "random order, 3 runs of 144 removals",
        f"within 1 point: {', '.join(str(int(v)) for v in curve.removable(1.0))}",
        f"{g3(accuracy.mean())} (mean of 3)",
    )

    k = 16
    single = {m: rng.normal(size=(IMAGES, k)) for m in ("prob_drop", "kl")}
    pair = {m: rng.normal(size=(IMAGES, k, k)) for m in single}
    pair = {m: (p + p.transpose(0, 2, 1)) / 2 for m, p in pair.items()}
    interaction = {m: pair[m] - single[m][:, :, None] - single[m][:, None, :] for m in single}
    for v in interaction.values():
        v[:, np.arange(k), np.arange(k)] = 0
    heads = np.stack(np.unravel_index(rng.permutation(LAYERS * HEADS)[:k], (LAYERS, HEADS)), 1)
    result = HeadInteractions(heads, single, pair, interaction)
    mean = interaction["prob_drop"].mean(0)
    i, j = np.triu_indices(k, 1)
    low = int(np.argmin(mean[i, j]))
    check_summary(
        result,
        "1,000 images x 16 heads, 120 pairs",
        f"{tuple(heads[i[low]].tolist())} and {tuple(heads[j[low]].tolist())}: "
        f"{g3(mean[i[low], j[low]])}",
    )


def test_strength_rollout_and_patterns_print_short(rng):
    hops = 14
    local = HopStrength(
        strength=rng.random((IMAGES, LAYERS, HEADS, hops)).astype(np.float32),
        mass=rng.random((IMAGES, LAYERS, HEADS, hops)).astype(np.float32),
        patch_to_cls=rng.random((IMAGES, LAYERS, HEADS)).astype(np.float32),
        cls_to_patch=rng.random((IMAGES, LAYERS, HEADS)).astype(np.float32),
        distance=(100 * rng.random((IMAGES, LAYERS, HEADS))).astype(np.float32),
        head_entropy=rng.random((IMAGES, LAYERS, HEADS)).astype(np.float32),
    )
    strength = StrengthResults(local, summarize(local), (14, 14), (16, 16), True, 1)
    distance = local.distance.astype(np.float64).mean(0)
    far = np.unravel_index(np.argmax(distance), distance.shape)
    check_summary(
        strength,
        "1,000 images x 12 layers x 12 heads",
        f"farthest: ({far[0]}, {far[1]}) {g3(distance[far])}",
    )

    contribution = rng.random((IMAGES, LAYERS)).astype(np.float32) / 2
    rollout = FinalRollout(rng.random((IMAGES, 14, 14)).astype(np.float32), contribution)
    check_summary(rollout, "1,000 images x 12 layers", g3(contribution[:, 3].mean()))

    latents = rng.normal(size=(IMAGES, LAYERS, HEADS, 16)).astype(np.float32)
    labels = rng.integers(0, 6, (IMAGES, LAYERS, HEADS))
    embedding = PatternEmbedding(
        latents=latents,
        xy=rng.normal(size=(IMAGES, LAYERS, HEADS, 2)),
        labels=labels,
        k=6,
        silhouette={4: 0.2, 5: 0.3, 6: 0.35},
        centres=rng.normal(size=(6, 16)),
        centres_xy=rng.normal(size=(6, 2)),
        representative_index=rng.integers(0, 12, (6, 3)),
        representative=rng.random((6, 27, 27)),
        decoded_centre=rng.random((6, 27, 27)),
        projection="umap",
        cluster_space="latent",
    )
    sizes = ", ".join(f"{n:,}" for n in np.bincount(labels.ravel(), minlength=6))
    check_summary(embedding, "144,000 patterns (1000 x 12 x 12) in 6 clusters", sizes)

    held = list(rng.random(40))
    model = TrainedAutoencoder(
        settings=AutoencoderSettings(),
        shape=(27, 27),
        params={"layer": rng.normal(size=(729, 256))},
        train_loss=list(rng.random(40)),
        heldout_loss=held,
        best_epoch=int(np.argmin(held)),
        heldout_index=np.arange(2000),
        fingerprint="0123456789abcdef",
    )
    check_summary(model, f"{g3(min(held))} at epoch {int(np.argmin(held))} of 40")


def test_a_bundle_and_an_image_set_print_short(rng, tmp_path):
    bundle = synthetic_bundle(rng, num_images=300, num_layers=12, num_heads=12)
    drop = bundle["importance"]["prob_drop"].astype(np.float64).mean(0)
    top = np.unravel_index(np.argmax(drop), drop.shape)
    check_summary(
        bundle,
        "300 images x 12 layers x 12 heads",
        "synthetic",  # the checkpoint the synthetic bundle names
        f"({top[0]}, {top[1]}) {g3(drop[top])}",
    )

    config = ViTConfig.from_variant(
        "mu/2", image_size=(8, 8), num_classes=3, class_names=("cat", "dog", "owl")
    )
    for name in ("cat", "owl"):
        (tmp_path / name).mkdir()
        for i in range(3):
            pixels = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    (tmp_path / "owl" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="skipped 1 file"):
        images = load_image_folder(tmp_path, config, progress=False)
    check_summary(
        images,
        "6 images of 8x8x3",
        "cat/0.png, cat/1.png, cat/2.png, ...",
        "2 of the model's 3 classes: cat, owl",
        "1 file(s)",
    )


def test_a_result_too_incomplete_to_summarise_still_prints():
    bundle = ResultsBundle(meta={}, parts={})
    assert repr(bundle) == "ResultsBundle: not summarised\n  because  KeyError: 'config'"
    assert "KeyError" in bundle._repr_html_()
