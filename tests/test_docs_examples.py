"""Every Python example of the documentation site runs (docs/**/*.md).

Each page's ```python blocks run in order in one namespace (a page's examples build on each
other), on a clean registry (conftest's autouse fixture flushes circuits, settings, defaults,
collectors and listeners before and after each page). A block may be left out only with an
explicit, visible reason on the line before it: ``<!-- example: skip <reason> -->``. Nothing is
left out silently: a block with neither a run nor a reason fails the test, and the counts of
blocks run and skipped are checked against the pages. A block about something host-wide circuits
do not do runs on private circuits only: ``<!-- example: private <reason> -->`` (under
FASTHYSTRIX_TEST_SHARED it is left out, with that reason).
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from conftest import SHARED_TESTS

DOCS = Path(__file__).resolve().parent.parent / "docs"
# A fenced block: its opening fence (any indentation), its language, its body, the closing fence.
_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)[ \t]*(?P<lang>[^\s`]*)[^\n]*\n(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
    re.S | re.M,
)
_SKIP = re.compile(r"<!--\s*example:\s*skip\s+(?P<reason>\S.*?)\s*-->\s*$")
_PRIVATE = re.compile(r"<!--\s*example:\s*private\s+(?P<reason>\S.*?)\s*-->\s*$")
# A block that only includes a repository file (pymdownx.snippets): the file is shown, not run here
# (examples/ has tests of its own); it must still compile.
_INCLUDE = re.compile(r'^\s*--8<--\s+"(?P<path>[^"]+)"\s*$')
ROOT = DOCS.parent


INCLUDED = "a repository file, compiled here and tested by its own tests: "


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md"))


def blocks(page: Path) -> list[tuple[int, str, str | None]]:
    """The page's Python blocks: (line number, code, the reason it is skipped or None)."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        if match.group("lang") not in ("python", "py", "pycon"):
            continue
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = _SKIP.search(before)
        code = textwrap.dedent(match.group("body"))
        reason = skip.group("reason") if skip else None
        private = _PRIVATE.search(before)
        if private and SHARED_TESTS:
            reason = f"private circuits only: {private.group('reason')}"
        includes = [_INCLUDE.match(c) for c in code.strip().splitlines()]
        if includes and all(includes):
            code = "".join((ROOT / m.group("path")).read_text(encoding="utf-8") for m in includes if m)
            reason = reason or f"{INCLUDED}{', '.join(m.group('path') for m in includes if m)}"
        found.append((line, code, reason))
    return found


def test_blocks_are_found() -> None:
    """The extraction sees the site's examples, and every skip names its reason."""
    pages = _pages()
    assert len(pages) >= 15, pages
    all_blocks = [b for p in pages for b in blocks(p)]
    ran = [b for b in all_blocks if b[2] is None]
    included = [b for b in all_blocks if b[2] is not None and b[2].startswith(INCLUDED)]
    skipped = [b for b in all_blocks if b[2] is not None and not b[2].startswith(INCLUDED)]
    print(
        f"{len(ran)} Python blocks run, {len(included)} included repository files compiled, "
        f"{len(skipped)} skipped with a reason, in {len(pages)} pages"
    )
    assert len(ran) >= 40
    # Used sparingly: an example that can run must run.
    assert len(skipped) <= len(ran) // 5, skipped
    for _, code, reason in all_blocks:
        assert code.strip(), "an empty python block"
        assert reason is None or len(reason) >= 10, f"a skip needs a real reason: {reason!r}"


def test_a_skip_marker_needs_a_reason(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text(
        "<!-- example: skip -->\n```python\n1/0\n```\n\n<!-- example: skip needs a server -->\n```python\n2\n```\n"
    )
    (first, second) = blocks(page)
    assert first[2] is None  # no reason: the block runs (and here fails)
    assert second[2] == "needs a server"


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_page_examples_run(page: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every block of the page runs, in order, in one namespace."""
    found = blocks(page)
    if not found:
        return
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    ran = 0
    for line, code, reason in found:
        if reason is not None:
            if reason.startswith(INCLUDED):
                compile(code, f"{page}:{line}", "exec")
            print(f"{page.name}:{line}: not run: {reason}")
            continue
        try:
            exec(compile(code, f"{page}:{line}", "exec"), namespace)
        except BaseException as exc:
            raise AssertionError(f"the example at {page.relative_to(DOCS)}:{line} failed: {exc!r}") from exc
        ran += 1
    print(f"{page.relative_to(DOCS)}: {ran} of {len(found)} blocks ran")
