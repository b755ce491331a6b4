"""Every Python block of the README runs as written (from the repository root)."""

from __future__ import annotations

import re

import pytest
from conftest import REPO, SHARED

BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    if "shared/data/fsdd" in BLOCKS[index] and not (SHARED / "data" / "fsdd").is_dir():
        pytest.skip(f"needs the FSDD copy at {SHARED / 'data' / 'fsdd'}")
    monkeypatch.chdir(REPO)
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {})
