"""The page's JavaScript modules: valid syntax, text helpers as written, shipped in the wheel."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
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
      fill: fill("hop_title", {head: "L1 H2"}),
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
    assert out["fill"] == "strength across neighbours: L1 H2"


@needs_node
def test_the_pages_offset_is_numpys_row_major_index(rng):
    """The one function the page finds every bundle value with, against NumPy, on every array
    of the registry at random sizes and coordinates."""
    from jaxvit_interp.quantities import registry_json

    registry = registry_json()
    dims = sorted({d for arrays in registry["schema"].values() for v in arrays.values() for d in v})
    sizes = {d: int(rng.integers(1, 7)) for d in dims}
    cases = []
    for part, arrays in registry["schema"].items():
        for name, array_dims in arrays.items():
            coords = {d: int(rng.integers(sizes[d])) for d in array_dims}
            shape = [sizes[d] for d in array_dims]
            want = int(np.ravel_multi_index([coords[d] for d in array_dims], shape))
            cases.append([part, name, coords, want])
    script = (
        'import {offset} from "./update.js";\n'
        f"const info = {{registry: {json.dumps(registry)}, sizes: {json.dumps(sizes)}}};\n"
        f"const cases = {json.dumps(cases)};\n"
        "console.log(JSON.stringify(cases.map(([p, n, c]) => offset(info, p, n, c))));\n"
    )
    result = _node("--input-type=module", "-e", script, cwd=JS_DIR)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [want for *_, want in cases]


@needs_node
@pytest.mark.parametrize("code", ["power", "linear"])
def test_the_pages_attention_decoder_is_numpys(rng, code):
    """The page's decoder of a record's attention against NumPy's, value for value: random
    codes, steps, row exponents and float16 special columns (subnormal and zero included), an
    [N, N] block read from a random row of a longer record."""
    from jaxvit_interp.attention_codes import decode_attention

    N, X, base = int(rng.integers(3, 12)), int(rng.integers(0, 3)), int(rng.integers(0, 4))
    rows = base + N + 2
    codes = rng.integers(0, 256, (rows, N)).astype(np.uint8)
    steps = (rng.uniform(0, 1, rows) / 255.0 ** rng.integers(1, 5, rows)).astype(np.float32)
    exponents = rng.integers(2, 5, rows).astype(np.uint8)
    values = [0.0, 2.0**-24, 3 * 2.0**-20, 1.0, *rng.uniform(0, 1, 4)]
    special = rng.choice(values, (rows, X)).astype(np.float16)
    if code == "linear":
        X, special = 0, special[:, :0]
        want = decode_attention(codes, steps, code=code)
    else:
        want = decode_attention(codes, steps, exponents, special, code=code)
    attention = {
        "code": code,
        "X": X,
        "steps": steps.tolist(),
        "exponents": exponents.tolist(),
        "special": special.view(np.uint16).ravel().tolist(),
        "codes": codes.ravel().tolist(),
    }
    script = (
        'import {attentionMatrix} from "./update.js";\n'
        f"const a = {json.dumps(attention)};\n"
        f"console.log(JSON.stringify(Array.from(attentionMatrix(a, {base}, {N}))));\n"
    )
    result = _node("--input-type=module", "-e", script, cwd=JS_DIR)
    assert result.returncode == 0, result.stderr
    got = np.array(json.loads(result.stdout), np.float32).reshape(N, N)
    np.testing.assert_array_equal(got, want[base : base + N])


def test_wheel_ships_the_modules(project_wheel):
    """A wheel built from the sources holds every module the page reads."""
    names = set(zipfile.ZipFile(project_wheel).namelist())
    for module in MODULES:
        assert f"jaxvit_interp/site/js/{module.name}" in names
    assert "jaxvit_interp/site/js/package.json" in names


@needs_node
def test_names_in_titles_and_fitted_axes(rng):
    """A class name on a canvas keeps its start as Python's ``short_name`` does, an id its end;
    a fitted axis runs from 0 past the largest finite value (to 1 when there is none)."""
    from jaxvit_interp.site.sources import ID_CHARS, NAME_CHARS, short_name

    alphabet = list("abcdefghij ,-_/.0123456789ABCXYZéü—")
    names = ["".join(rng.choice(alphabet, int(rng.integers(1, 45)))) for _ in range(40)]
    values = rng.exponential(1e-3, 5).tolist()
    script = (
        'import {shortName, shortId, fitRange} from "./update.js";\n'
        f"const info = {{name_chars: {NAME_CHARS}, id_chars: {ID_CHARS}}};\n"
        f"const names = {json.dumps(names)};\n"
        "const fit = (values, room) => { const r = {}; fitRange(r, values, room); return r; };\n"
        "console.log(JSON.stringify({names: names.map((n) => shortName(info, n)),\n"
        "  ids: names.map((n) => shortId(info, n)),\n"
        f"  some: fit([NaN, ...{json.dumps(values)}], 1.2), none: fit([NaN, 0]),\n"
        "  empty: fit([])}));\n"
    )
    result = _node("--input-type=module", "-e", script, cwd=JS_DIR)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["names"] == [short_name(n) for n in names]
    for name, short in zip(names, out["ids"], strict=True):
        assert short == name if len(name) <= ID_CHARS else short == "…" + name[-(ID_CHARS - 1) :]
    assert out["some"] == {"start": 0, "end": pytest.approx(1.2 * max(values))}
    assert out["none"] == out["empty"] == {"start": 0, "end": 1}
