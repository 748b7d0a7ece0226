"""The README's Python examples run as written: docs checked against code."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.support import REPO

BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(code: str, tmp_path: Path) -> None:
    # The examples use fixed /tmp paths for readability; start each run from nothing.
    for path in set(re.findall(r'"(/tmp/semindex-readme[^"]*)"', code)):
        shutil.rmtree(path, ignore_errors=True)
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
