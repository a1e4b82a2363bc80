import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Reference implementations shared by tests live beside them.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "model"))


@pytest.fixture
def rng(request):
    """A NumPy generator with a fresh seed each run; the seed is printed so a failure can be replayed."""
    seed = int(os.environ.get("JAXVIT_TEST_SEED", secrets.randbits(32)))
    print(f"{request.node.name}: JAXVIT_TEST_SEED={seed}")
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def project_wheel(tmp_path_factory) -> Path:
    """A wheel built from this checkout's sources, as `pip install .` would build it."""
    import jaxvit_interp

    root = Path(jaxvit_interp.__file__).parent.parent
    if not (root / "pyproject.toml").is_file():
        pytest.skip("building a wheel needs the source checkout, not an installed package")
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src)
    # A copy (links followed, as a build does), so the build's own folders stay out of the
    # checkout; sites/ holds the demo's spec, which the package links to.
    for folder in ("jaxvit_interp", "sites"):
        shutil.copytree(root / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    build = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-index"]
    build += ["--no-build-isolation", "--quiet", "-w", str(work / "dist")]
    result = subprocess.run(build, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    (wheel,) = (work / "dist").glob("*.whl")
    return wheel
