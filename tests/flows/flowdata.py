"""Recipe data for the flow tests (a uniquely named module, imported as `flowdata`)."""

from __future__ import annotations

from pathlib import Path


def small_recipe(corpus: Path, output: Path, **extra) -> dict:
    data = {"name": "small", "inputs": [str(corpus)], "output": str(output), "k": 6,
            "cluster_groups": 2,
            "selectors": [{"method": "semdedup", "eps": 0.05},
                          {"method": "dbp", "budget": 0.5}],
            "tokenizer": {"vocab_size": 300}}
    data.update(extra)
    return data
