"""A built-in model whose answers are known: procedural 16x16 images with planted rules.

The digits model's heads all sit near the same entropy, so the analyses have nothing planted to
find there. Here every image is drawn from rules chosen so that each rule needs a different kind
of attention, and the analyses can be checked against them (``benchmarks/shapes_recovery.py``).

An image is 16x16 grayscale, background 0 (``-1`` after preprocessing). It holds 2 to 4
*squares* of 2x2 ink pixels, each exactly one patch of the 8x8 grid of 2x2 patches, anywhere but
the top-left 2x2 patches; and sometimes a *marker* in patch 0 (the top-left 2x2 pixels). Each
square and the marker has its own shade of ink, uniform in [0.5, 1] (0 to 1 after
preprocessing), so no two images are alike even where their layouts are. Two squares *touch*
when their patches are 4-neighbours (they share an edge); squares that do not touch have at
least one blank patch between them, diagonally too (:data:`MIN_GAP` blank pixels).
The label is the first rule that applies:

1. ``marker-solid``: the marker is all four pixels. Whatever else the image holds.
2. ``marker-diagonal``: the marker is the two pixels of the main diagonal. Whatever else.
3. ``touching``: no marker, and one pair of the squares touches.
4. ``two``, ``three``, ``four``: no marker and no squares touch; the number of squares.

So rules 1-2 are read at one fixed patch, rule 3 is a local question (two neighbouring patches:
one hop on the patch grid) and rules 4-6 are a global one (a count over the whole image). Each class is drawn equally often;
the squares of marker images touch or not, and number 2 to 4, like the others, so the marker
cannot be skipped.

The images are a pure function of the seed (:func:`make_shapes`); the shipped split is
:data:`TRAIN_SEED` / :data:`TEST_SEED`. The model (:data:`SHAPES_CONFIG`, 2x2 patches: an 8x8
grid plus CLS, as small as the digits model) is trained and saved over the shipped copy with
``python -m jaxvit_interp.data.shapes --train``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxvit_interp.data import builtin_models
from jaxvit_interp.errors import InputError
from jaxvit_interp.model.config import Preprocessing, ViTConfig
from jaxvit_interp.progress import ProgressArg

CLASS_NAMES = ["marker-solid", "marker-diagonal", "touching", "two", "three", "four"]
MARKER_CLASSES = (0, 1)
TOUCHING_CLASS = 2
COUNT_CLASSES = {3: 2, 4: 3, 5: 4}  # class -> number of squares
IMAGE_SIZE = 16
SQUARE = 2  # side of a square and of a patch, in pixels
GRID = IMAGE_SIZE // SQUARE  # patches a side
# Squares stay out of the marker's patch and its neighbours, so they never touch it.
KEEP_OUT = 2  # patches: rows and columns 0 and 1 together
MIN_GAP = SQUARE  # blank pixels between squares that do not touch: one patch
SHADES = (0.5, 1.0)  # the range of a square's (or the marker's) ink
MARKERS = {
    0: np.ones((SQUARE, SQUARE), np.float32),
    1: np.eye(SQUARE, dtype=np.float32),
}
TRAIN_IMAGES = 6000
TEST_IMAGES = 1200
TRAIN_SEED = 0
SHAPES_TRAIN_STEPS = 3000
TEST_SEED = 1
BACKGROUND = -1.0  # a blank pixel after preprocessing

SHAPES_PREPROCESSING = Preprocessing(mean=(0.5,), std=(0.5,), resize=None, crop=False)
SHAPES_CONFIG = ViTConfig(
    image_size=(IMAGE_SIZE, IMAGE_SIZE),
    patch_size=(2, 2),
    channels=1,
    hidden_size=48,
    num_layers=6,
    num_heads=4,
    mlp_dim=96,
    num_classes=len(CLASS_NAMES),
    classifier="token",
    layer_norm_eps=1e-6,
    gelu_approximate=True,
    preprocessing=SHAPES_PREPROCESSING,
    class_names=tuple(CLASS_NAMES),
)


def _apart(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether squares at patches ``a`` and ``b`` have a blank patch between them."""
    return abs(a[0] - b[0]) >= 2 or abs(a[1] - b[1]) >= 2


def _allowed(patch: tuple[int, int]) -> bool:
    """Inside the grid and outside the marker's keep-out corner."""
    inside = 0 <= min(patch) and max(patch) < GRID
    return inside and (patch[0] >= KEEP_OUT or patch[1] >= KEEP_OUT)


def _free_patch(rng: np.random.Generator) -> tuple[int, int]:
    """A square's patch anywhere outside the marker's keep-out corner."""
    while True:
        patch = tuple(int(v) for v in rng.integers(0, GRID, size=2))
        if _allowed(patch):
            return patch


def _touching_pair(rng: np.random.Generator) -> list[tuple[int, int]]:
    """Two squares in 4-neighbouring patches: side by side or stacked."""
    while True:
        first = _free_patch(rng)
        second = (first[0], first[1] + 1) if rng.integers(2) else (first[0] + 1, first[1])
        if _allowed(second):
            return [first, second]


def _place_squares(rng: np.random.Generator, count: int, touching: bool) -> list[tuple[int, int]]:
    """Patches of ``count`` squares; exactly one touching pair when ``touching``, else none."""
    while True:  # a crowded draw is rare on 8x8 patches; start again rather than backtrack
        squares = _touching_pair(rng) if touching else []
        for _ in range(100):
            if len(squares) == count:
                return squares
            patch = _free_patch(rng)
            if all(_apart(patch, other) for other in squares):
                squares.append(patch)


def draw_image(rng: np.random.Generator, label: int) -> np.ndarray:
    """One ``[16, 16]`` image in [0, 1] of class ``label``, its layout and shades from ``rng``."""
    image = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    if label in MARKER_CLASSES:
        count = int(rng.integers(2, 5))
        touching = bool(rng.integers(2))
        image[:SQUARE, :SQUARE] = MARKERS[label] * rng.uniform(*SHADES)
    elif label == TOUCHING_CLASS:
        count, touching = int(rng.integers(2, 5)), True
    else:
        count, touching = COUNT_CLASSES[label], False
    for i, j in _place_squares(rng, count, touching):
        image[i * SQUARE : (i + 1) * SQUARE, j * SQUARE : (j + 1) * SQUARE] = rng.uniform(*SHADES)
    return image


def make_shapes(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` raw images ``[count, 16, 16, 1]`` in [0, 1] and their labels, from ``seed``.

    Labels cycle through the classes in a seeded random order, so every class is drawn
    ``count / 6`` times (to within one); the same seed always gives the same images.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % len(CLASS_NAMES)).astype(np.int32)
    images = np.stack([draw_image(rng, int(label)) for label in labels])
    return images[..., None], labels


def remove_marker(images: np.ndarray) -> np.ndarray:
    """The same preprocessed images with the marker patch blanked (the no-marker counterpart)."""
    out = np.array(images, copy=True)
    out[:, :SQUARE, :SQUARE] = BACKGROUND
    return out


def load_shapes(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed images ``[B, 16, 16, 1]`` float32 in [-1, 1] and labels ``[B]``.

    ``split`` is ``"train"`` (6,000 images from :data:`TRAIN_SEED`) or ``"test"`` (1,200
    held-out images from :data:`TEST_SEED`: new shades throughout, while the layouts of the
    smallest classes repeat those of training, two touching squares having only 104 layouts).
    """
    if split not in ("train", "test"):
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    raw, labels = make_shapes(
        *{"train": (TRAIN_IMAGES, TRAIN_SEED), "test": (TEST_IMAGES, TEST_SEED)}[split]
    )
    return (raw - 0.5) / 0.5, labels


def shapes_train_config(seed: int = 0):
    """The shipped model's optimisation settings.

    No translation augmentation: the marker rule is tied to one position, and a shift would move
    the marker out of patch 0 (or a square into it).
    """
    from jaxvit_interp.model.train import TrainConfig

    return TrainConfig(steps=SHAPES_TRAIN_STEPS, warmup_steps=200, max_shift=0, seed=seed)


def train_shapes_model(
    train_config=None, *, directory: Path | None = None, progress: ProgressArg = True
) -> dict:
    """Train :data:`SHAPES_CONFIG` on the training images and save it (default: the shipped copy).

    Returns the metadata written beside the weights: held-out accuracy, settings, loss history.
    """
    return builtin_models.train_and_save(
        builtin_models.SHAPES,
        SHAPES_CONFIG,
        train_config or shapes_train_config(),
        load_shapes,
        background=BACKGROUND,
        directory=directory,
        progress=progress,
    )


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m jaxvit_interp.data.shapes",
        description="Train the built-in shapes ViT (fixed seed, reproducible) and save it, by "
        "default over the copy shipped inside the package.",
    )
    parser.add_argument("--train", action="store_true", help="train and save the model")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--out", help="folder to write to instead of the shipped copy")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not args.train:
        parser.print_help()
        return 0
    out = Path(args.out) if args.out else None
    meta = train_shapes_model(
        shapes_train_config(args.seed), directory=out, progress=not args.quiet
    )
    print(
        f"held-out accuracy {meta['test_accuracy']:.4f} on {meta['test_images']} images "
        f"(train {meta['train_accuracy']:.4f}); {meta['train_seconds']:.0f} s; saved to "
        f"{out or 'the package built-in folder'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
