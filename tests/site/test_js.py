"""The page's JavaScript modules: valid syntax, text helpers as written, shipped in the wheel."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import jaxvit_interp

JS_DIR = Path(jaxvit_interp.__file__).parent / "site" / "js"
MODULES = sorted(JS_DIR.glob("*.js"))

needs_node = pytest.mark.skipif(
    shutil.which("node") is None, reason="checking the page's JavaScript needs node"
)


def _node(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["node", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_the_page_has_its_modules():
    assert {p.name for p in MODULES} >= {"update.js", "search.js", "all_images.js", "cls_query.js"}


@needs_node
@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_module_syntax(module):
    result = _node("--check", str(module))
    assert result.returncode == 0, result.stderr


@needs_node
def test_syntax_check_catches_a_broken_module(tmp_path):
    # Outside a package of "type": "module", node 20 passes broken ES modules silently.
    shutil.copytree(JS_DIR, tmp_path / "js")
    broken = tmp_path / "js" / "broken.js"
    broken.write_text("export default function update(page) {\n  return page;\n")
    result = _node("--check", str(broken))
    assert result.returncode != 0
    assert "SyntaxError" in result.stderr


@needs_node
def test_text_helpers():
    script = """
    import {sig, fixed, fill} from "./update.js";
    const values = [0.5, 0.12345, 12.345, 123.4, 0.0012, 1234, 0, -0.25, NaN, Infinity];
    console.log(JSON.stringify({
      sig: values.map(sig),
      fixed: [fixed(0.12345, 3), fixed(Infinity, 3)],
      fill: fill("hop_title", {head: "layer 1, head 2"}),
    }));
    """
    result = _node("--input-type=module", "-e", script, cwd=JS_DIR)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    # Three significant figures; an exponent below 0.01 and from 1000 on.
    assert out["sig"] == [
        "0.500",
        "0.123",
        "12.3",
        "123",
        "1.2e-3",
        "1.2e+3",
        "0.00",
        "-0.250",
        "n/a",
        "n/a",
    ]
    assert out["fixed"] == ["0.123", "n/a"]
    assert out["fill"] == "strength across neighbours: layer 1, head 2"


@pytest.mark.slow
def test_wheel_ships_the_modules(tmp_path):
    """A wheel built from the sources holds every module the page reads."""
    root = Path(jaxvit_interp.__file__).parent.parent
    if not (root / "pyproject.toml").is_file():
        pytest.skip("building a wheel needs the source checkout, not an installed package")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src)
    # A copy, so that the build's own folders stay out of the checkout.
    shutil.copytree(
        root / "jaxvit_interp",
        src / "jaxvit_interp",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    build = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-index"]
    build += ["--no-build-isolation", "--quiet", "-w", str(tmp_path / "dist")]
    result = subprocess.run(build, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in MODULES:
        assert f"jaxvit_interp/site/js/{module.name}" in names
    assert "jaxvit_interp/site/js/package.json" in names
