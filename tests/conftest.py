import contextlib
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Reference implementations shared by tests live beside them; helpers of the whole suite here.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "model"))
sys.path.insert(0, os.path.dirname(__file__))
from sessionfolders import made_once  # noqa: E402

# One JAX compilation cache for the whole test session, shared by the xdist workers and by every
# command the tests start in a subprocess: the command-line tests run the same small models'
# programs again and again, and compiling them is most of their time on CPU. The cache is made
# fresh for each session and removed at its end, so a session never reads another's programs.
# A size limit makes JAX lock the folder, so concurrent processes never read a half-written entry.
_JIT_CACHE = "JAX_COMPILATION_CACHE_DIR"


# The tests' models are tiny: compiling their programs takes far longer than running them, and
# most of a compile on CPU is LLVM optimising machine code. The tests ask it for none (XLA's own
# graph passes, which decide what is computed and in which order, still run): compile-bound test
# files take about half as long, the whole suite about a quarter less (runtime-bound work is a
# little slower). Set for the whole session, so the commands the tests start inherit it too.
_COMPILE_FAST = "--xla_backend_optimization_level=0"


def pytest_configure(config):
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {_COMPILE_FAST}".strip()
    if os.environ.get(_JIT_CACHE):
        return  # a worker (it inherits the controller's), or a cache the caller chose
    import tempfile

    folder = tempfile.mkdtemp(prefix="jaxvit-test-jit-cache-")
    config._jaxvit_jit_cache = folder
    os.environ[_JIT_CACHE] = folder
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.1"
    os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(8 << 30)
    if "jax" in sys.modules:  # too late for the environment to be read: set it directly
        import jax

        jax.config.update("jax_compilation_cache_dir", folder)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
        jax.config.update("jax_compilation_cache_max_size", 8 << 30)


def pytest_unconfigure(config):
    folder = getattr(config, "_jaxvit_jit_cache", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def rng(request):
    """A NumPy generator with a fresh seed each run; the seed is printed so a failure can be replayed."""
    seed = int(os.environ.get("JAXVIT_TEST_SEED", secrets.randbits(32)))
    print(f"{request.node.name}: JAXVIT_TEST_SEED={seed}")
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (Playwright's Browser), shared by the session's browser tests; they are
    skipped with the reason where Chromium or Playwright is missing."""
    from jaxvit_interp.site.browser import BrowserUnavailable, chromium, find_chromium

    try:
        find_chromium()
    except BrowserUnavailable as err:
        pytest.skip(f"browser tests need Chromium: {err}")
    pytest.importorskip("playwright", reason="browser tests need the 'playwright' package")
    with chromium() as b:
        yield b


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


@pytest.fixture(scope="session")
def digits_head_sets_run(tmp_path_factory):
    """The shipped digits model (6 layers x 4 heads) analysed on 24 held-out digits (one chunk)
    with the head-set stage on 6 of them: ``(config, params, images, labels, settings, run
    folder)``. Shared by the stage's test, the site test of its views and the test of what the
    run logs (made once for all the session's workers): its stderr went to ``stderr.txt``
    beside the run folder, as a batch job's would, with a progress line at every few percent
    (no wait between them). The greedy order (24 ablation batches, a compile each) is left out
    here: the library's tests cover it."""
    from jaxvit_interp.patterns.train import AutoencoderSettings
    from jaxvit_interp.pipeline.analyze import analyze
    from jaxvit_interp.pipeline.settings import AnalysisSettings

    digits = pytest.importorskip("jaxvit_interp.data.digits")
    try:
        config, params = digits.load_digits_model()
    except FileNotFoundError as e:
        pytest.skip(f"digits model not built yet: {e}")
    images, labels = digits.load_digits("test")
    images, labels = images[:24], labels[:24]
    settings = AnalysisSettings(
        chunk_images=24,
        partial_images=2,
        attention_images=2,
        pattern_samples=64,
        clusters=3,
        projection="tsne",
        autoencoder=AutoencoderSettings(max_epochs=2, batch_size=32, latent_dim=4, features=(8,)),
        set_images=6,
        interaction_heads=4,
        random_orders=1,
        greedy_max_heads=0,
    )

    def make(folder: Path) -> None:
        with (
            open(folder / "stderr.txt", "w") as log,
            contextlib.redirect_stderr(log),
            pytest.MonkeyPatch.context() as env,
        ):
            env.setenv("JAXVIT_PROGRESS_SECONDS", "0")
            analyze(
                config, params, images, folder / "run", labels=labels, settings=settings,
                progress=True,
            )  # fmt: skip

    out = made_once(tmp_path_factory, "digits-head-sets", make) / "run"
    return config, params, images, labels, settings, out


@pytest.fixture(scope="session")
def kinds_run(tmp_path_factory):
    """The tiny model analysed on 9 random images in three chunks with every ablation kind,
    mean first, the head-set and Shapley stages on 4 of them, the explanations stage on 3 and
    the patching stage on 3 pairs of them: ``(params, images, labels, settings, run folder)``.
    Shared by the tests of the kinds and kept stages in the run (tests/pipeline) and on the page
    (tests/site), and made once for all the session's workers: the first draws the seed and
    keeps it beside the run."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "pipeline"))
    from clitools import TINY

    from jaxvit_interp import init_params
    from jaxvit_interp.patterns.train import AutoencoderSettings
    from jaxvit_interp.pipeline.analyze import analyze
    from jaxvit_interp.pipeline.settings import AnalysisSettings

    def inputs(seed: int):
        rng = np.random.default_rng(seed)
        params = init_params(TINY, int(rng.integers(1 << 30)))
        images = rng.normal(0, 1, (9, *TINY.image_size, TINY.channels)).astype(np.float32)
        labels = rng.integers(0, TINY.num_classes, 9)
        settings = AnalysisSettings(
            chunk_images=4,  # three chunks, the last one short
            partial_images=0,
            attention_images=0,
            pattern_samples=64,
            clusters=3,
            projection="tsne",
            autoencoder=AutoencoderSettings(
                max_epochs=2, batch_size=16, latent_dim=4, features=(8,)
            ),
            set_images=4,
            interaction_heads=3,
            random_orders=1,
            greedy_max_heads=0,
            ablations=("mean", "zero", "resample"),
            reference_images=5,
            shapley_images=4,
            shapley_permutations=8,
            explain_images=3,
            explain_steps=4,
            explain_baseline="mean",  # not the default: the stage must pass it on
            seed=int(rng.integers(1000)),
        )
        # Clean and corrupted images of the patching stage (the bundle's patching/pairs).
        pairs = rng.permutation(9)[:6].reshape(3, 2)
        return params, images, labels, settings, pairs

    def make(folder: Path) -> None:
        seed = int(os.environ.get("JAXVIT_TEST_SEED", secrets.randbits(32)))
        (folder / "seed.txt").write_text(str(seed))
        params, images, labels, settings, pairs = inputs(seed)
        analyze(
            TINY, params, images, folder / "run", labels=labels, settings=settings,
            patching_pairs=pairs, progress=False,
        )  # fmt: skip

    folder = made_once(tmp_path_factory, "ablation-kinds", make)
    seed = int((folder / "seed.txt").read_text())
    print(f"ablation kinds run: JAXVIT_TEST_SEED={seed}")
    params, images, labels, settings, _ = inputs(seed)
    return params, images, labels, settings, folder / "run"
