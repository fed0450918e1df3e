"""The README's training-stream example runs as written (on a synthetic token store)."""

from __future__ import annotations

import re
from pathlib import Path

from tokstores import write_token_store

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_stream_example() -> str:
    text = README.read_text()
    section = re.search(r"^## Training stream \(Python\)\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, "README has no '## Training stream (Python)' section"
    blocks = re.findall(r"```python\n(.*?)```", section.group(1), re.S)
    assert blocks, "the section has no python example"
    return blocks[0]


def test_readme_stream_example_runs(tmp_path, capsys):
    store = write_token_store(tmp_path / "tokens", {
        "python_docs": (150, 400), "python_code": (150, 400), "speeches": (100, 600),
        "math": (100, 200), "dialogue": (50, 100)})
    code = readme_stream_example()
    line = 'TOKENS = "out/demo/tokens"'
    assert line in code
    exec(compile(code.replace(line, f"TOKENS = {str(store)!r}"), "README.md", "exec"), {})
    out = capsys.readouterr().out
    steps = int(out.split()[0])
    assert steps >= 400_000 // (8 * 2048)
    assert "400000 tokens per epoch" in out
