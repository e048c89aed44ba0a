"""mkdocs hooks (mkdocs.yml's ``hooks:``): repository files included into pages keep working links.

CHANGES.md and ARCHITECTURE.md are included whole by the snippets extension (``--8<--``), so
the site cannot drift from them. Their links are written for the repository's root
(``docs/memory-model.md``, ``ARCHITECTURE.md``); a preprocessor that runs after snippets points
them at the site's pages, so that strict mode's link check still sees every link. Only links
that name a repository path (``docs/...``, the root's ``*.md``, ``examples/``, ``benchmarks/``,
``tests/``, ``src/``) are rewritten: a page's own relative links are checked as written.
"""

from __future__ import annotations

import re
from typing import Any

from markdown import Extension, Markdown
from markdown.preprocessors import Preprocessor

# Repository paths -> the page that holds the same text on the site.
_PAGES = {"ARCHITECTURE.md": "architecture.md", "CHANGES.md": "changelog.md", "README.md": "index.md"}
_REPO = "https://github.com/fasthystrix/fasthystrix/blob/main/"
_LINK = re.compile(
    r"\]\(((?:docs|examples|benchmarks|tests|src)/[^)\s]*|ARCHITECTURE\.md|CHANGES\.md|README\.md)(#[^)\s]*)?\)"
)


def _site_link(match: re.Match[str]) -> str:
    path, anchor = match.group(1), match.group(2) or ""
    if path.startswith("docs/"):
        return f"]({path[len('docs/') :]}{anchor})"
    if path in _PAGES:
        return f"]({_PAGES[path]}{anchor})"
    return f"]({_REPO}{path}{anchor})"  # examples/, benchmarks/...: the file in the repository


class _RootLinks(Preprocessor):
    def run(self, lines: list[str]) -> list[str]:
        return [_LINK.sub(_site_link, line) for line in lines]


class _RootLinksExtension(Extension):
    def extendMarkdown(self, md: Markdown) -> None:  # Python-Markdown names it
        # snippets runs at priority 32: this one sees the included text.
        md.preprocessors.register(_RootLinks(md), "fasthystrix_root_links", 31)


def on_config(config: Any) -> Any:
    config.markdown_extensions.append(_RootLinksExtension())
    return config
