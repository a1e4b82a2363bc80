"""Labels that mean the model's classes.

Images come with label *texts*: class folder names, or the ``label`` column of a CSV. Every metric
that uses a label compares it with the model's output, so a text must become the index of the
class the model means by it, never a number made up from the order of the folders.

:func:`match_labels` turns the texts into class indices, in this order:

1. the model's class name, exactly, then ignoring case, ``_`` and repeated spaces;
2. another spelling of a class: each comma-separated synonym of a name (``"tench, Tinca
   tinca"``), and for ImageNet-1k models the synset id (``n01440764``) and every synonym;
3. a class index written as an integer (``"7"``), when it is no class's name.

A text that matches none of them is an error naming where it came from, the text and the
nearest class names. A text that names two classes (ImageNet has two ``crane`` classes) is an
error too, asking for the index or the synset id.

A model without class names accepts integer labels as indices. Otherwise, and only when there
are exactly as many distinct labels as the model has classes, the sorted labels are taken as
classes ``0 .. C-1``, and the run says so. Anything else is refused: the labels cannot be tied
to the model's classes, and a metric against a wrong class is worse than no metric.

The chosen matching is recorded (:class:`LabelMatching`) and stored in the results bundle.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxvit_interp.data.imagenet import imagenet1k, is_imagenet1k
from jaxvit_interp.errors import InputError

__all__ = [
    "LabelError",
    "LabelMatching",
    "display_class_names",
    "match_labels",
    "read_class_names",
]

_INDEX = re.compile(r"[+-]?\d+")
_SHOWN = 5  # failures (or classes) an error message lists before summarising the rest


class LabelError(InputError):
    """Labels that cannot be tied to the model's classes."""


@dataclasses.dataclass(frozen=True)
class LabelMatching:
    """How the label texts given with the images became the model's class indices.

    Attributes:
      source: where the texts came from: ``"folders"`` (class subfolders), ``"csv"``, or
        ``"builtin"`` (a built-in model's images, labelled by its class names).
      classes: ``"model"`` when the model names its classes, ``"none"`` when it does not.
      index: label text -> class index.
      how: label text -> how it was matched: ``"name"``, ``"alias"``, ``"index"`` or
        ``"sorted order"``.
      note: a sentence for the run's log when the matching is worth a look, else ``""``.
      names: for a model without class names whose classes were numbered in sorted label
        order, those labels (class ``i`` is ``names[i]``); else None.
    """

    source: str
    classes: str
    index: dict[str, int]
    how: dict[str, str]
    note: str = ""
    names: tuple[str, ...] | None = None

    def to_dict(self, class_names: Sequence[str]) -> dict[str, Any]:
        """JSON for the results bundle: each label with its class index, name and how."""
        return {
            "source": self.source,
            "classes": self.classes,
            "labels": {
                text: {"class": i, "name": class_names[i], "by": self.how[text]}
                for text, i in self.index.items()
            },
            "note": self.note,
        }


def _normal(text: str) -> str:
    return " ".join(str(text).replace("_", " ").casefold().split())


class _NameTable:
    """Lookups of a model's class names and their other spellings."""

    def __init__(self, class_names: Sequence[str]):
        self.names = [str(n) for n in class_names]
        self.exact: dict[str, list[int]] = {}
        self.normal: dict[str, list[int]] = {}
        self.alias: dict[str, list[int]] = {}
        for i, name in enumerate(self.names):
            self.exact.setdefault(name, []).append(i)
            self.normal.setdefault(_normal(name), []).append(i)
        spellings = [[s for s in name.split(",") if s.strip()] for name in self.names]
        if is_imagenet1k(self.names):
            known = imagenet1k()
            spellings = [
                [*own, known.names[i], *known.aliases[i]] for i, own in enumerate(spellings)
            ]
        for i, words in enumerate(spellings):
            for word in dict.fromkeys(_normal(w) for w in words):
                if i not in self.alias.setdefault(word, []):
                    self.alias[word].append(i)

    def lookup(self, text: str) -> tuple[list[int], str]:
        """Candidate class indices of ``text`` and how they matched (``[]`` if none)."""
        for table, key, how in (
            (self.exact, text, "name"),
            (self.normal, _normal(text), "name"),
            (self.alias, _normal(text), "alias"),
        ):
            if key in table:
                return table[key], how
        return [], ""

    def nearest(self, text: str) -> list[str]:
        """Up to three class names spelled most like ``text``."""
        spelled = {**{w: ix for w, ix in self.alias.items()}, **self.normal}
        close = difflib.get_close_matches(_normal(text), list(spelled), n=3, cutoff=0.6)
        return list(dict.fromkeys(self.names[i] for w in close for i in spelled[w]))[:3]


def _classes_listing(class_names: Sequence[str] | None, num_classes: int) -> str:
    if class_names is None:
        return f"the model's {num_classes} classes have no names (indices 0..{num_classes - 1})"
    if list(class_names) == [str(i) for i in range(num_classes)]:
        return f"the model's classes are named 0..{num_classes - 1}"
    shown = ", ".join(f"{i}: {n}" for i, n in enumerate(class_names[:_SHOWN]))
    more = f", ... ({num_classes} in all)" if num_classes > _SHOWN else ""
    return f"the model's classes are {shown}{more}"


def _fail(problems: list[str], class_names, num_classes: int, advice: str = "") -> LabelError:
    first, rest = problems[0], problems[1:]
    lines = [first + (f" (and {len(rest)} more label(s), listed below)" if rest else "")]
    lines += [f"  {p}" for p in rest[: 2 * _SHOWN]]
    if len(rest) > 2 * _SHOWN:
        lines.append(f"  ... and {len(rest) - 2 * _SHOWN} more")
    lines.append(f"  {_classes_listing(class_names, num_classes)}")
    if advice:
        lines.append(f"  {advice}")
    return LabelError("\n".join(lines))


def _as_index(text: str, num_classes: int) -> int | None:
    """``int(text)`` when it is an integer in ``[0, num_classes)``, else None."""
    if _INDEX.fullmatch(text.strip()):
        value = int(text)
        if 0 <= value < num_classes:
            return value
    return None


def match_labels(
    texts: Sequence[str],
    *,
    class_names: Sequence[str] | None,
    num_classes: int,
    origins: Mapping[str, str],
    source: str,
) -> LabelMatching:
    """Tie each distinct label text to one of the model's classes (see the module docstring).

    Args:
      texts: the label texts (repeats allowed).
      class_names: the model's class names, or None when it has none.
      num_classes: the model's number of classes.
      origins: label text -> where it was read, for error messages (``"labels.csv:4"``,
        ``"class folder photos/tench"``).
      source: ``"folders"`` or ``"csv"`` (recorded in the result).

    Raises:
      LabelError: a text matches no class, or more than one; or the model has no names and
        the texts are neither class indices nor exactly as many as the classes.
    """
    distinct = sorted(set(texts))
    if class_names is not None:
        table = _NameTable(class_names)
        index, how, problems = {}, {}, []
        for text in distinct:
            candidates, by = table.lookup(text)
            if len(candidates) == 1:
                index[text], how[text] = candidates[0], by
            elif len(candidates) > 1:
                named = ", ".join(f"{i}: {table.names[i]}" for i in candidates)
                problems.append(
                    f"{origins[text]}: label {text!r} names {len(candidates)} of the model's "
                    f"classes ({named}); give the class index (or, for ImageNet, the synset id)"
                )
            elif (i := _as_index(text, num_classes)) is not None:
                index[text], how[text] = i, "index"
            else:
                near = table.nearest(text)
                hint = (
                    "nearest class names: " + ", ".join(repr(n) for n in near)
                    if near
                    else "no class name is close"
                )
                problems.append(
                    f"{origins[text]}: label {text!r} is not one of the model's classes ({hint})"
                )
        if problems:
            raise _fail(problems, class_names, num_classes)
        return LabelMatching(source, "model", index, how)

    indices = {text: _as_index(text, num_classes) for text in distinct}
    if all(i is not None for i in indices.values()):
        return LabelMatching(source, "none", indices, dict.fromkeys(distinct, "index"))
    if len(distinct) == num_classes:
        note = (
            f"the model has no class names: its {num_classes} classes are taken to be the "
            f"{len(distinct)} labels in sorted order ({', '.join(distinct[:_SHOWN])}"
            + (", ..." if num_classes > _SHOWN else "")
            + "); give --class-names FILE if that is not the model's order"
        )
        return LabelMatching(
            source,
            "none",
            {text: i for i, text in enumerate(distinct)},
            dict.fromkeys(distinct, "sorted order"),
            note,
            tuple(distinct),
        )
    problems = [
        f"{origins[text]}: label {text!r} is not a class index 0..{num_classes - 1}"
        for text, i in indices.items()
        if i is None
    ]
    raise _fail(
        problems,
        None,
        num_classes,
        f"the model has no class names, and the {len(distinct)} distinct labels are not "
        f"{num_classes} classes that sorted order could number: give the model's class names "
        "with --class-names FILE, or label the images with class indices",
    )


def read_class_names(path: str | Path, num_classes: int) -> tuple[str, ...]:
    """Class names from a file: one name per line, or JSON (a list, or ``{"0": name, ...}``).

    Raises:
      LabelError: the file is unreadable, or gives another number of names than
        ``num_classes``, or an empty name.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise LabelError(f"class names file {path} is not valid JSON: {err}") from None
        if isinstance(data, dict):
            try:
                data = [data[k] for k in sorted(data, key=int)]
            except ValueError:
                raise LabelError(
                    f"class names file {path}: a JSON object must map class indices to names"
                ) from None
        if not isinstance(data, list):
            raise LabelError(f"class names file {path}: expected a JSON list of names")
        names = [str(n).strip() for n in data]
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != num_classes:
        raise LabelError(
            f"class names file {path} gives {len(names)} names; the model has {num_classes} "
            "classes (one name per line, in class-index order)"
        )
    if not all(names):
        raise LabelError(f"class names file {path}: class {names.index('')} has an empty name")
    return tuple(names)


def display_class_names(
    class_names: Sequence[str] | None, num_classes: int, matching: LabelMatching | None = None
) -> list[str]:
    """The name shown for each class: the model's name for it; for a model without names, the
    label that sorted order gave it (see :func:`match_labels`), else its index."""
    if class_names is not None:
        return [str(n) for n in class_names]
    if matching is not None and matching.names is not None:
        return list(matching.names)
    return [str(i) for i in range(num_classes)]
