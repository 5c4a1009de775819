"""Every relative link in README.md and docs/*.md resolves inside the repository: the file or folder exists,
and an anchor (``#section``) names a heading of the linked Markdown file, slugged as GitHub does."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

REPO = Path(__file__).resolve().parents[2]

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:[^>]*\s)?(?:id|name)=[\"']([^\"']+)[\"']", re.IGNORECASE)
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+\1")
# [text](target "title") and ![alt](target): text may hold one level of brackets
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of the lines outside fenced code blocks."""
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if match:
            if fence is None:
                fence = match.group(1)
            elif match.group(1) == fence:
                fence = None
            continue
        if fence is None:
            yield number, line


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lower-cased, punctuation dropped, spaces made hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    # HTML tags are dropped, code spans kept as text (`<model>` is text, <br> is a tag)
    parts = re.split(r"(`+[^`]*`+)", text)
    text = "".join(part if part.startswith("`") else re.sub(r"<[^>]+>", "", part) for part in parts)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    """Every anchor of a Markdown file: its headings (repeats get -1, -2, ...) and explicit HTML anchors."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(markdown.read_text(encoding="utf-8")):
        found.update(HTML_ANCHOR.findall(line))
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(markdown: Path) -> Iterator[tuple[int, str]]:
    """(line number, target) of every link and image of a Markdown file, code excluded."""
    for number, line in prose_lines(markdown.read_text(encoding="utf-8")):
        prose = INLINE_CODE.sub("", line)
        for match in INLINE_LINK.finditer(prose):
            yield number, match.group(1)
        definition = REFERENCE_DEFINITION.match(prose)
        if definition:
            yield number, definition.group(1)


def broken_links(markdown: Path, root: Path = REPO) -> list[str]:
    """``file:line: target: why`` for every relative link of ``markdown`` that does not resolve under ``root``."""
    broken = []
    root = root.resolve()
    for number, target in links(markdown):
        where = f"{markdown.relative_to(root)}:{number}: {target}"
        if not target:
            broken.append(f"{where}: empty link")
            continue
        if SCHEME.match(target):
            continue  # http(s), mailto: not checked here
        path, _, anchor = target.partition("#")
        linked = (markdown.parent / unquote(path)).resolve() if path else markdown.resolve()
        if not linked.is_relative_to(root):
            broken.append(f"{where}: points outside the repository")
        elif not linked.exists():
            broken.append(f"{where}: no such file or folder")
        elif anchor and linked.suffix == ".md" and unquote(anchor) not in anchors(linked):
            broken.append(f"{where}: no heading or anchor #{anchor} in {linked.relative_to(root)}")
    return broken


def documents() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_every_relative_link_of_the_readme_and_docs_resolves():
    assert (REPO / "docs" / "operations.md") in documents()
    broken = [problem for document in documents() for problem in broken_links(document)]
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_a_missing_file_a_missing_anchor_and_a_link_out_of_the_repository_are_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "README.md").write_text("# Project\n\n## The gate (`core/gate.py`)\n\n## Notes\n\n## Notes\n")
    page = tmp_path / "docs" / "guide.md"
    page.write_text(
        "# Guide\n\n"
        "[good](../README.md#the-gate-coregatepy), [second notes](../README.md#notes-1), "
        "[folder](../data/), [self](#guide), ![picture](../README.md), <a id='kept'></a>[explicit](#kept)\n"
        "[gone](../missing.md) and [typo](../README.md#the-gate) and [out](../../elsewhere.md)\n"
        "`[in code](nowhere.md)` [web](https://example.com/x.md) [mail](mailto:a@example.com)\n"
        "```\n[in a fence](nowhere.md)\n```\n"
        "[ref]: ../missing-too.md\n"
    )

    assert broken_links(page, root=tmp_path) == [
        "docs/guide.md:4: ../missing.md: no such file or folder",
        "docs/guide.md:4: ../README.md#the-gate: no heading or anchor #the-gate in README.md",
        "docs/guide.md:4: ../../elsewhere.md: points outside the repository",
        "docs/guide.md:9: ../missing-too.md: no such file or folder",
    ]


def test_headings_are_slugged_as_github_does():
    assert slug("The gate (`plugins/mlops_airflow/core/gate.py`)") == "the-gate-pluginsmlops_airflowcoregatepy"
    assert slug("The `mlops` command line") == "the-mlops-command-line"
    assert slug("Rollback, aliases and pins") == "rollback-aliases-and-pins"
    assert slug("Lineage (OpenLineage)") == "lineage-openlineage"
    assert slug("The DAGs of a model `<model>`") == "the-dags-of-a-model-model"
    assert slug("Which version serves: the champion resolver") == "which-version-serves-the-champion-resolver"
