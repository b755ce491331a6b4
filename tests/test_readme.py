"""Every Python block of the README runs as written (from the repository root)."""

from __future__ import annotations

import re

import pytest
from conftest import REPO, SHARED

BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 5


#: Where the README's audio example expects FSDD (``sparling data fetch fsdd --to data/fsdd``).
FSDD = '"data/fsdd"'


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    block = BLOCKS[index]
    if FSDD in block and not (REPO / "data" / "fsdd").is_dir():
        # not fetched here: use a copy beside the repository (../shared) if there is one
        if not (SHARED / "data" / "fsdd").is_dir():
            pytest.skip(f"needs FSDD at {REPO / 'data' / 'fsdd'} (sparling data fetch fsdd)")
        block = block.replace(FSDD, repr(str(SHARED / "data" / "fsdd")))
    monkeypatch.chdir(REPO)
    # The Extending examples register a bottleneck and a domain: each block runs against
    # the registries as they were, and leaves them so (other tests list them exactly).
    from sparling import bottlenecks, domains

    domains.names()  # the built-in domains register first
    monkeypatch.setattr(bottlenecks, "BOTTLENECKS", dict(bottlenecks.BOTTLENECKS))
    monkeypatch.setattr(domains, "_REGISTRY", dict(domains._REGISTRY))
    exec(compile(block, f"README.md block {index}", "exec"), {})
