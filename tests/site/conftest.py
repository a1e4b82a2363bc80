"""Fixtures of the site tests: synthetic bundles with fresh randomness, built sites, opened pages
(the browser is the whole suite's, tests/conftest.py)."""

from __future__ import annotations

import os
import secrets
import sys

import numpy as np
import pytest

from jaxvit_interp.site.browser import open_site
from jaxvit_interp.site.document import build_site

# The helpers module beside this file (tests are imported with importlib, not as a package).
sys.path.insert(0, os.path.dirname(__file__))
from sitepage import SitePage, make_bundle  # noqa: E402


@pytest.fixture(scope="session")
def site_seed():
    """One fresh seed for the session's shared sites (printed, replayable with JAXVIT_TEST_SEED)."""
    seed = int(os.environ.get("JAXVIT_TEST_SEED", secrets.randbits(32)))
    print(f"site fixtures: JAXVIT_TEST_SEED={seed}")
    return seed


@pytest.fixture(scope="session")
def tiny_bundle(site_seed):
    """30 images, 5 classes, 3x2 heads, 4x4 patches + CLS; partial for 8, attention for 6."""
    return make_bundle(
        np.random.default_rng(site_seed),
        num_layers=3,
        num_heads=2,
        grid=(4, 4),
        partial_images=8,
        attention_images=6,
    )


@pytest.fixture(scope="session")
def tiny_site(tiny_bundle, tmp_path_factory):
    return build_site(tiny_bundle, tmp_path_factory.mktemp("tiny_site"))


@pytest.fixture
def open_page(browser, tmp_path, site_seed):
    """Open a site; the final state of every opened page is saved as a screenshot in tmp_path,
    and the seed of the session's shared sites is printed again (a failure's output shows it,
    where the fixture's own line went to whichever test made it first)."""
    pages = []
    print(f"site fixtures: JAXVIT_TEST_SEED={site_seed}")

    def _open(path, **options):  # options of open_site: width, height, ...
        page = open_site(browser, path, **options)
        pages.append(page)
        return SitePage(page)

    yield _open
    for i, page in enumerate(pages):
        page.screenshot(path=str(tmp_path / f"screenshot-{i}.png"), full_page=True)
        print(f"screenshot: {tmp_path / f'screenshot-{i}.png'}")
        page.close()
