"""Short reprs and notebook tables of result objects: what a result holds, at a glance.

A result of thousands of numbers printed whole says nothing. A class that derives from
:class:`Summarized` names a few rows instead (:meth:`Summarized._summary`: its shapes, metrics
and a few headline numbers), which ``repr`` shows as indented lines and a notebook as a small
HTML table (``_repr_html_``).
"""

from __future__ import annotations

import html
from collections.abc import Iterable

import numpy as np

# Heads named in a summary's "top heads" row.
TOP_HEADS = 3


class Summarized:
    """A result whose ``repr`` and notebook display are its :meth:`_summary`."""

    def _summary(self) -> tuple[str, list[tuple[str, str]]]:
        """``(what it is, [(row label, text), ...])``: shapes first, then a few numbers."""
        raise NotImplementedError

    def _rows(self) -> tuple[str, list[tuple[str, str]]]:
        """:meth:`_summary`, or for an object too incomplete to summarise (a bundle whose meta
        lacks the config) a row that says why: a repr never fails."""
        try:
            return self._summary()
        except Exception as error:  # noqa: BLE001 (any: this is only a display)
            return "not summarised", [("because", f"{type(error).__name__}: {error}")]

    def __repr__(self) -> str:
        title, rows = self._rows()
        width = max((len(label) for label, _ in rows), default=0)
        lines = [f"{type(self).__name__}: {title}"]
        lines += [f"  {label.ljust(width)}  {text}" for label, text in rows]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        title, rows = self._rows()
        cell = 'style="text-align:left"'
        body = "".join(
            f"<tr><th {cell}>{html.escape(label)}</th><td {cell}>{html.escape(text)}</td></tr>"
            for label, text in rows
        )
        return (
            f"<table><caption {cell}><b>{html.escape(type(self).__name__)}</b>: "
            f"{html.escape(title)}</caption>{body}</table>"
        )


def number(value) -> str:
    """A headline number: 3 significant digits (``nan`` when there is none)."""
    value = float(value)
    return "nan" if not np.isfinite(value) else f"{value:.3g}"


def sizes(**dims: int) -> str:
    """``sizes(images=24, layers=6, heads=4)`` -> ``"24 images x 6 layers x 4 heads"``."""
    return " x ".join(f"{count:,} {name}" for name, count in dims.items())


def listed(items: Iterable) -> str:
    """``"prob, prob_drop, kl"``."""
    return ", ".join(str(i) for i in items)


def top_heads(per_image: np.ndarray, highest: bool = True) -> str:
    """The :data:`TOP_HEADS` heads of highest (or lowest) mean of ``per_image`` ``[image, layer,
    head]`` over the images, NaN left out, with their means: ``"(3, 1) 0.212, (5, 0) 0.104,
    (2, 2) 0.0512"`` (``(layer, head)``, as the API names a head)."""
    from jaxvit_interp.importance.aggregate import mean_over_images, rank_heads

    mean = mean_over_images(per_image)
    ranked = rank_heads(mean, higher_is_more_important=highest)
    return ", ".join(
        f"({layer}, {head}) {number(mean[layer, head])}" for layer, head in ranked[:TOP_HEADS]
    )
