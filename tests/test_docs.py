"""The docs run: every Python block in README.md and DISTRIBUTED.md preceded by a
``<!-- runs`` comment is executed, in order, in one namespace per document, in a fresh
directory (a block that claims to run and does not fails here)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNNABLE = re.compile(r"<!-- runs[^>]*-->\s*```python\n(.*?)```", re.S)


def runnable_blocks(doc: Path) -> list[str]:
    return RUNNABLE.findall(doc.read_text(encoding="utf-8"))


def test_the_readme_marks_its_first_example_and_quick_start_as_runnable() -> None:
    blocks = runnable_blocks(ROOT / "README.md")
    assert len(blocks) >= 2
    assert "async def process_order" in blocks[0] and "start_local" in blocks[1]


@pytest.mark.parametrize("name", ["README.md", "DISTRIBUTED.md"])
def test_the_runnable_blocks_run(name: str, tmp_path: Path) -> None:
    blocks = runnable_blocks(ROOT / name)
    if not blocks:
        pytest.skip(f"{name} marks no block as runnable")
    script = tmp_path / "doc_blocks.py"
    script.write_text("\n\n".join(blocks), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"{name}'s runnable blocks fail:\n{done.stdout}\n{done.stderr}"
