"""The README's Python examples run as written: docs checked against code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support import REPO

BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S)


def hermetic(code: str, folder: Path) -> str:
    """The block with its fixed /tmp/semindex-readme* paths moved into this test's own folder.

    The README keeps short, fixed paths for readability; each test run gets fresh ones, so runs do
    not see each other's stores and can run in parallel. Nothing else in the code changes.
    """
    return code.replace("/tmp/semindex-readme", str(folder / "semindex-readme"))


@pytest.mark.slow  # the examples show what the real default model finds
@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(code: str, tmp_path: Path) -> None:
    hermetic_code = hermetic(code, tmp_path)
    assert "/tmp/semindex-readme" not in hermetic_code
    exec(compile(hermetic_code, "README.md", "exec"), {"__name__": "__readme__"})
