"""The README's quickstart works as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_quickstart_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert blocks, "README has no python block"
    quickstart = blocks[0]
    assert len(quickstart.strip().splitlines()) <= 25
    result = subprocess.run(
        [sys.executable, "-c", quickstart], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Connected(" in result.stdout
    assert "reconnect=True" in result.stdout
    assert "ClientStats(connects=2" in result.stdout


def test_typed_messages_snippet_is_valid_code() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    typed = next(b for b in blocks if "class Trade(Message)" in b)
    namespace: dict[str, object] = {}
    exec(
        compile(typed, "README.md", "exec", dont_inherit=True), namespace
    )  # builds the client; never connects
    client = namespace["client"]
    assert getattr(client, "state").value == "idle"  # noqa: B009
