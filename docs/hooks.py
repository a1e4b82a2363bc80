"""MkDocs hooks: two files outside docs/ become pages, and links to them point at those pages.

docs/*.md are written to read on GitHub, where they link to ``../README.md`` and
``../benchmarks/RESULTS.md``; in the documentation site those are the pages
``getting-started.md`` and ``results.md``, made here from the same files (never copied into docs/,
so there is one text of each).
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
# page in the site -> the repository file it is made from
GENERATED = {"getting-started.md": "README.md", "results.md": "benchmarks/RESULTS.md"}
# Repository files the README links to, served as they are (a download) at the same path.
SERVED = ("examples/explore.ipynb",)
# A link written for GitHub -> the same target in the site, by the page the link sits in.
FROM_DOCS = {
    "../README.md": "getting-started.md",
    "../benchmarks/RESULTS.md": "results.md",
    "../benchmarks/": "results.md",
}
FROM_README = {"docs/": "", "benchmarks/RESULTS.md": "results.md"}
FROM_RESULTS = {"../docs/": "", "../README.md": "getting-started.md"}
LINK_TARGET = re.compile(r"\]\(([^)\s#]*)")


def _relink(markdown: str, table: dict[str, str]) -> str:
    def replace(match: re.Match) -> str:
        target = match.group(1)
        for old, new in table.items():
            if target == old or (old.endswith("/") and target.startswith(old)):
                return "](" + (new if target == old else new + target[len(old) :])
        return match.group(0)

    return LINK_TARGET.sub(replace, markdown)


def on_files(files, config):
    for page, source in GENERATED.items():
        text = (ROOT / source).read_text(encoding="utf-8")
        table = FROM_README if source == "README.md" else FROM_RESULTS
        files.append(File.generated(config, page, content=_relink(text, table)))
    for path in SERVED:
        files.append(File.generated(config, path, content=(ROOT / path).read_bytes()))
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri in GENERATED:
        return markdown
    return _relink(markdown, FROM_DOCS)
