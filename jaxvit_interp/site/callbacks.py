"""The page's behaviour: ES modules in ``js/`` run as CustomJS, so the file works with no server.

State lives in the shared sources' selections, so every view that draws an entity shows its
selection without extra code:

- the chosen image is ``images.selected`` (empty = all images, the global view);
- the chosen head is ``heads.selected`` (always one; an empty selection restores the last);
- the partial-pruning mode is ``partial_bars.selected`` and the query patch ``patches.selected``
  (empty = the CLS token, or the centre patch in a model without CLS).

One ``update`` function (``js/update.js``), run once when the document is ready and then on
every selection and widget change, recomputes the display sources from the entity tables (row
layouts in :mod:`jaxvit_interp.site.sources`) and records the resulting state in the ``state``
source. The modules are used as they are written: what they need from the build reaches them
as CustomJS ``args`` (models by name, and plain values such as ``info``).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from bokeh.models import CustomJS
from bokeh.palettes import Viridis256


def js_code(name: str) -> str:
    """The source of the module ``js/{name}.js`` shipped with the package."""
    return (resources.files(__package__) / "js" / f"{name}.js").read_text(encoding="utf-8")


def _module(name: str, args: dict[str, Any]) -> CustomJS:
    return CustomJS(args=args, code=js_code(name), module=True)


def update_callback(info: dict[str, Any], models: dict[str, Any]) -> CustomJS:
    """The callback that redraws every view from the current selections and widgets."""
    values = {"info": info, "value_palette": list(Viridis256)}
    clash = sorted(values.keys() & models.keys())
    if clash:
        raise ValueError(f"site models may not be named {clash}: the page's code reads those names")
    return _module("update", {**models, **values})


def search_callback(args: dict[str, Any]) -> CustomJS:
    return _module("search", args)


def global_callback(args: dict[str, Any]) -> CustomJS:
    return _module("all_images", args)


def cls_query_callback(args: dict[str, Any]) -> CustomJS:
    return _module("cls_query", args)


def deferred_views_callback(views, state) -> CustomJS:
    """The callback that adds the views held in the ``views`` row's tags (E and F) to its
    children once the opening state is drawn (``js/deferred_views.js``)."""
    return _module("deferred_views", {"views": views, "state": state})
