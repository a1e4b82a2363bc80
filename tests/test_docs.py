"""The README and the docs/ pages hold what they point at: every relative link reaches a file (and
its heading), every `jaxvit-interp` command in a shell block names a subcommand and flags the
command line really has, and the README stays a front door that starts with the commands CI runs.
"""

import argparse
import ast
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = ("bash", "sh", "console")
# The fresh-machine command the README opens with; its second line is CI's test command.
DEMO_COMMAND = "pip install -e . && jaxvit-interp demo"
README_MAX_LINES = 200

FENCE = re.compile(r"^```(\S*)\s*$")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`[^`]*`")


def _blocks(text: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The page's prose lines (outside fenced blocks) and its fenced blocks as (language, body)."""
    prose, blocks, language, body = [], [], None, []
    for line in text.splitlines():
        fence = FENCE.match(line)
        if language is None and fence:
            language, body = fence.group(1), []
        elif language is not None and line.strip() == "```":
            blocks.append((language, "\n".join(body)))
            language = None
        elif language is not None:
            body.append(line)
        else:
            prose.append(line)
    assert language is None, "a fenced block is not closed"
    return prose, blocks


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = INLINE_CODE.sub(lambda m: m.group(0)[1:-1], heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    prose, _ = _blocks(page.read_text())
    return {github_anchor(line.lstrip("#")) for line in prose if re.match(r"#{1,6} ", line)}


def links(page: Path) -> list[str]:
    prose, _ = _blocks(page.read_text())
    found = []
    for line in prose:
        found += LINK.findall(INLINE_CODE.sub("", line))
    return found


def broken_links(page: Path) -> list[str]:
    """Each relative link of ``page`` whose file or heading does not exist, with why."""
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # https:, mailto: ...: not checked offline
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file {file}")
        elif anchor and (file.suffix != ".md" or anchor not in anchors(file)):
            broken.append(f"{target}: no heading with anchor #{anchor} in {file.name}")
    return broken


def cli_commands(page: Path) -> list[tuple[str, list[str]]]:
    """Each ``jaxvit-interp`` command of the page's shell blocks and inline code as (the command,
    its words after ``jaxvit-interp``); one quoted inside another (``ssh ... --command "..."``)
    counts too."""

    def scan(text: str) -> list[list[str]]:
        commands = []
        for line in text.replace("\\\n", " ").splitlines():  # a line ends a command
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            lexer.commenters = "#"
            commands += scan_words(lexer)
        return commands

    def scan_words(lexer) -> list[list[str]]:
        commands, current = [], None
        for word in lexer:
            if set(word) <= set(";&|<>()"):  # an operator ends the command
                current = None
            elif word == "jaxvit-interp":
                current = []
                commands.append(current)
            elif current is not None:
                current.append(word)
            elif "jaxvit-interp " in word:
                commands += scan(word)
        return commands

    prose, blocks = _blocks(page.read_text())
    texts = [body for language, body in blocks if language in SHELL_BLOCKS]
    # Commands quoted in the text, `jaxvit-interp analyze --help`, a span that may wrap a line.
    texts += [
        span[1:-1].replace("\n", " ")
        for span in re.findall(r"`[^`]+`", "\n".join(prose))
        if span.startswith("`jaxvit-interp ")
    ]
    return [(f"jaxvit-interp {' '.join(words)}", words) for text in texts for words in scan(text)]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def unknown_words(words: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """The subcommand or flags in ``words`` (``analyze --out runs/x ...``) that ``parser`` lacks."""
    subcommands = _subcommands(parser)
    if not words or words[0].startswith("-"):
        target, flags = parser, words
    elif words[0] not in subcommands:
        return [f"subcommand {words[0]!r} (the command has {', '.join(subcommands)})"]
    else:
        target, flags = subcommands[words[0]], words[1:]
    known = {option for action in target._actions for option in action.option_strings}
    return [
        f"flag {word.split('=')[0]}"
        for word in flags
        if word.startswith("--") and word.split("=")[0] not in known
    ]


@pytest.fixture(scope="module")
def parser():
    from jaxvit_interp.cli import build_parser

    return build_parser()


def test_every_relative_link_reaches_a_file_and_heading():
    checked = [target for page in PAGES for target in links(page)]
    assert len(checked) >= 20, checked  # the index and the README link every page
    broken = {str(page.relative_to(ROOT)): broken_links(page) for page in PAGES}
    assert broken == dict.fromkeys(broken, [])


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "other.md").write_text(
        "# Other\n\n## Two words `here`\n\n```\n## not a heading\n```\n"
    )
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md) [ok](other.md#two-words-here) [ok](#this-page) [web](https://x.org/y)\n"
        "# This page\n[gone](missing.md) [bad](other.md#not-a-heading) `[code](nowhere.md)`\n"
    )
    assert broken_links(page) == [
        f"missing.md: no such file {tmp_path / 'missing.md'}",
        "other.md#not-a-heading: no heading with anchor #not-a-heading in other.md",
    ]


def test_every_documented_command_names_a_subcommand_and_flags_the_cli_has(parser):
    commands = [
        (page.relative_to(ROOT), *command) for page in PAGES for command in cli_commands(page)
    ]
    named = {words[0] for _, _, words in commands if words}
    # The README's and the manual's commands cover the main subcommands.
    assert {"demo", "inspect", "analyze", "site", "prune", "benchmark"} <= named, named
    unknown = {
        f"{page}: {line}": unknown_words(words, parser)
        for page, line, words in commands
        if unknown_words(words, parser)
    }
    assert unknown == {}


def test_a_command_with_an_unknown_flag_or_subcommand_is_found(parser, tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\nfor i in 0 1; do\n  X=$i jaxvit-interp analyze --out a \\\n"
        "    --no-such-flag 2> log.txt &\ndone\njaxvit-interp analyse --out b  # a comment --x\n"
        'ssh host --command "jaxvit-interp prune --remove=3 --nope"\n```\n'
        "```python\njaxvit-interp inspect --bad\n```\n"
        "Inline, `jaxvit-interp site RUN --out DIR\n--layout single`; `jaxvit-interp: error: ...`\n"
    )
    commands = cli_commands(page)
    assert [words for _, words in commands] == [
        ["analyze", "--out", "a", "--no-such-flag", "2"],
        ["analyse", "--out", "b"],
        ["prune", "--remove=3", "--nope"],
        ["site", "RUN", "--out", "DIR", "--layout", "single"],
    ]
    assert [unknown_words(words, parser) for _, words in commands] == [
        ["flag --no-such-flag"],
        [f"subcommand 'analyse' (the command has {', '.join(_subcommands(parser))})"],
        ["flag --nope"],
        [],
    ]


def test_the_readme_is_a_front_door_that_starts_with_ci_s_commands():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"
    # .ci/run's last line is the README's test command, exactly.
    ci_test_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    first = [line for line in lines if line.strip()][:5]
    assert first == ["# jaxvit-interp", "```bash", DEMO_COMMAND, ci_test_command, "```"]


def test_every_documented_site_spec_is_one_the_loader_accepts(tmp_path):
    from jaxvit_interp.site.spec import load_site_spec

    specs = [
        body
        for page in PAGES
        for language, body in _blocks(page.read_text())[1]
        if language == "toml" and re.search(r"^model = ", body, re.M)
    ]
    assert specs, "no site spec in the docs"
    for number, body in enumerate(specs):
        path = tmp_path / f"spec-{number}.toml"
        path.write_text(body)
        load_site_spec(path)  # raises, naming the key, on a spec it refuses


def python_names(body: str) -> list[tuple[str, str]]:
    """What a Python block uses of the package, unresolved: ``(what, dotted path)`` for each
    imported name and each ``jvi.X.Y`` attribute chain (``jvi`` is the package unless the block
    binds it otherwise), and ``(what, "path(keyword=)")`` for each keyword of a call to one."""
    tree = ast.parse(body)
    aliases = {"jvi": "jaxvit_interp"}
    used: list[tuple[str, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for name in node.names:
                if name.name.split(".")[0] == "jaxvit_interp":
                    aliases[name.asname or name.name.split(".")[0]] = (
                        name.name if name.asname else "jaxvit_interp"
                    )
                    used.append(("import", name.name))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxvit_interp"):
            for name in node.names:
                aliases[name.asname or name.name] = f"{node.module}.{name.name}"
                used.append(("import", f"{node.module}.{name.name}"))

    def dotted(node) -> str | None:
        if isinstance(node, ast.Name):
            return aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = dotted(node.value)
            return None if base is None else f"{base}.{node.attr}"
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and dotted(node):
            used.append(("attribute", dotted(node)))
        if isinstance(node, ast.Call) and dotted(node.func):
            used += [("keyword", f"{dotted(node.func)}({k.arg}=)") for k in node.keywords if k.arg]
    return used


def resolve(path: str):
    """The object a dotted path names: the longest prefix that is a module, imported, then
    attributes (``jaxvit_interp.pipeline.analyze.analyze`` is the function in the module, which
    the package's own ``analyze`` attribute hides); AttributeError if there is none."""
    import importlib

    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            obj = getattr(obj, part)
        return obj
    raise AttributeError(path)


def unresolved(body: str) -> list[str]:
    """The names and keywords of a Python block that the package does not have."""
    import inspect

    missing = []
    for what, path in python_names(body):
        target, _, keyword = path.partition("(")
        try:
            obj = resolve(target)
        except (AttributeError, ImportError):
            if what != "keyword":
                missing.append(f"{what} {target}")
            continue
        if what == "keyword":
            keyword = keyword.rstrip("=)")
            try:
                parameters = inspect.signature(obj).parameters
            except (TypeError, ValueError):
                continue
            if keyword not in parameters and not any(
                p.kind is p.VAR_KEYWORD for p in parameters.values()
            ):
                missing.append(f"keyword {keyword}= of {target}")
    return missing


def test_every_python_block_parses_and_uses_names_the_package_has():
    """Each ```python block of the README and the manual: valid Python whose imports from the
    package, ``jvi.`` attributes (methods of results included, where the chain starts at the
    package) and call keywords exist."""
    blocks = [
        (page.relative_to(ROOT), body)
        for page in PAGES
        for language, body in _blocks(page.read_text())[1]
        if language == "python"
    ]
    assert len(blocks) >= 10, len(blocks)
    problems = {f"{page} block {n}": unresolved(body) for n, (page, body) in enumerate(blocks)}
    assert problems == dict.fromkeys(problems, [])


def test_a_python_block_with_a_missing_name_or_keyword_is_found():
    body = (
        "import jaxvit_interp as jvi\nfrom jaxvit_interp.explain import explain, no_such_thing\n"
        "jvi.head_importance(c, p, x, y, ablation='mean', no_such_keyword=1)\n"
        "jvi.ViTConfig.from_variant('B/16').grid\njvi.nope.deeper\nexplain(c, p, x, y, methods=())\n"
    )
    assert sorted(unresolved(body)) == [
        "attribute jaxvit_interp.nope",
        "attribute jaxvit_interp.nope.deeper",
        "import jaxvit_interp.explain.no_such_thing",
        "keyword no_such_keyword= of jaxvit_interp.head_importance",
    ]


@pytest.mark.slow
def test_the_documentation_site_builds_with_warnings_as_errors(tmp_path):
    """`mkdocs build` (strict: every warning fails it, links and anchors between pages included)
    and its API page documents every name the package exports."""
    import subprocess

    import jaxvit_interp

    out = tmp_path / "docs-site"
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    api = (ROOT / "docs" / "api.md").read_text()
    entries = {id(resolve(path)) for path in re.findall(r"^::: (\S+)$", api, re.M)}
    undocumented = [
        name
        for name in jaxvit_interp.__all__
        if id(getattr(jaxvit_interp, name)) not in entries and f"`jvi.{name}`" not in api
    ]
    assert undocumented == []
    page = (out / "api" / "index.html").read_text()
    assert 'id="jaxvit_interp.head_importance"' in page and "prob_drop" in page
    assert (out / "getting-started" / "index.html").is_file()
    assert (out / "results" / "index.html").is_file()
