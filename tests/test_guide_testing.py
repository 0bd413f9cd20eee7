"""docs/guides/testing-your-bot.md: every Python block runs as written and prints what it claims."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "guides" / "testing-your-bot.md"
TEXT = GUIDE.read_text()
# ```python blocks are programs (asyncio.run(main())); ```py blocks are test files for a user's
# suite, which need their bot: those are only compiled.
PROGRAMS = re.findall(r"^```python\n(.*?)^```", TEXT, re.DOTALL | re.MULTILINE)
TEST_FILES = re.findall(r"^```py title=\"[^\"]+\"\n(.*?)^```", TEXT, re.DOTALL | re.MULTILINE)

# What each program must print, in page order: proof that it did its job, not only that it exited.
EXPECTED = [
    "reconnected and resubscribed after a restart",
    "recovered: 1 reconnect(s)",
    "violations: {'streams': 1}",
    "frames over 2 connections, replayed twice",
]


def test_the_guide_has_its_blocks() -> None:
    assert len(PROGRAMS) == len(EXPECTED)
    assert len(TEST_FILES) == 2


@pytest.mark.parametrize("index", range(len(EXPECTED)))
def test_each_program_runs_as_written(index: int) -> None:
    code = PROGRAMS[index]
    assert len(code.strip().splitlines()) <= 40, "keep guide examples short"
    assert "asyncio.run(main())" in code
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=GUIDE.parent.parent.parent,
    )
    assert result.returncode == 0, result.stderr
    assert EXPECTED[index] in result.stdout, result.stdout


@pytest.mark.parametrize("index", range(2))
def test_each_test_file_compiles(index: int) -> None:
    compile(TEST_FILES[index], f"{GUIDE.name}[py {index}]", "exec", dont_inherit=True)
    assert 'pytest_plugins = ["wsclient.testing.pytest_plugin"]' in TEST_FILES[index]


def test_every_fixture_of_the_plugin_is_in_the_guide() -> None:
    from wsclient.testing import pytest_plugin

    fixtures = [name for name in pytest_plugin.__all__ if not name.startswith("Make")]
    assert fixtures
    for name in fixtures:
        assert f"`{name}`" in TEXT, name
