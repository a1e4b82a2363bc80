"""Sessions: ``nox -s tests``, ``nox -s compare``, ``nox -s lint``, ``nox -s docs``,
``nox -s benchmarks``."""

from pathlib import Path

import nox

# The site's page code: ES modules, which the package.json beside them declares to node.
JS_MODULES = sorted(Path("jaxvit_interp/site/js").glob("*.js"))

nox.options.sessions = ["tests", "lint"]


@nox.session
def tests(session):
    """The whole suite, comparisons against PyTorch / transformers included."""
    session.install("-e", ".[test,compare]")
    session.run("pytest", "-n", "2", *session.posargs)


@nox.session
def compare(session):
    """Only the tests that compare against another library."""
    session.install("-e", ".[test,compare]")
    session.run("pytest", "-m", "compare", *session.posargs)


@nox.session
def lint(session):
    """Ruff's checks and its formatting, over the package, the tests and the benchmarks; node's
    syntax check of the site's JavaScript."""
    session.install("ruff")
    paths = ["jaxvit_interp", "tests", "benchmarks", "noxfile.py"]
    session.run("ruff", "check", *paths, *session.posargs)
    session.run("ruff", "format", "--check", *paths)
    for module in JS_MODULES:
        session.run("node", "--check", str(module), external=True)


@nox.session
def docs(session):
    """The manual as a site in docs-site/ (MkDocs; every warning an error)."""
    session.install("-e", ".[test]")
    session.run("mkdocs", "build", "--strict")


@nox.session
def benchmarks(session):
    """Run one benchmark script: ``nox -s benchmarks -- benchmarks/forward_throughput.py``."""
    session.install("-e", ".[compare]")
    session.run("python", *(session.posargs or ["benchmarks/forward_throughput.py"]))
