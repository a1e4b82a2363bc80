"""The published site: a results bundle rendered as one offline HTML file with four linked views.

- :func:`build_site`: bundle -> ``out_dir/index.html`` (BokehJS inline, CustomJS only).
- :func:`build_comparison_site`: several bundles -> a comparison page and each run's own site.
- :func:`export_figures`: each view as PNG and SVG for a chosen image and head (headless Chromium).
- :func:`load_site_spec`: a ``sites/*.toml`` spec, parsed and checked (one model, or several
  ``[[model]]`` tables for a comparison).
"""

from jaxvit_interp.site.comparison import build_comparison_site
from jaxvit_interp.site.document import build_document, build_site
from jaxvit_interp.site.export import export_figures
from jaxvit_interp.site.sources import SiteData, prepare_site_data
from jaxvit_interp.site.spec import SiteModel, SiteSpec, SiteSpecError, load_site_spec

__all__ = [
    "SiteData",
    "SiteModel",
    "SiteSpec",
    "SiteSpecError",
    "build_comparison_site",
    "build_document",
    "build_site",
    "export_figures",
    "load_site_spec",
    "prepare_site_data",
]
