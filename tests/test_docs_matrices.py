"""The runnable example of docs/matrices.md (adding a matrix in one file) runs and checks itself."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "matrices.md"


def test_adding_a_matrix_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    example = next(b for b in blocks if "class OutputGramOperator" in b)
    exec(compile(example, str(DOC), "exec"), {"__name__": "docs_example"})  # noqa: S102 - our own docs
    assert capsys.readouterr().out.split() == ["chain", "(26,", "26)", "output_gram", "chain"]
