"""`--runner ray`: the same recipe on a local Ray cluster (2 CPUs) selects the same rows."""

from __future__ import annotations

import pytest
from flowdata import small_recipe

from gristmill.flows.recipe import load_recipe
from gristmill.flows.run import run_curate
from gristmill.storage.selection import read_selection

pytest.importorskip("prefect_ray")
pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]


def test_ray_runner_matches_the_local_runner(small_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    steps = [{"method": "semdedup", "eps": 0.05}, {"method": "kmq", "budget": 0.5}]
    shards = {"rows_per_shard": 75}  # two embedding shards, mapped to two Ray tasks
    local = run_curate(load_recipe(data=small_recipe(small_corpus, tmp_path / "local",
                                                     selectors=steps, tokenizer=None,
                                                     ingest=shards)))
    ray = run_curate(load_recipe(data=small_recipe(small_corpus, tmp_path / "ray",
                                                   selectors=steps, tokenizer=None,
                                                   ingest=shards)),
                     runner="ray")
    assert "embed shard 1" in [o["task"] for o in ray["outcomes"]]
    assert {o["outcome"] for o in ray["outcomes"]} == {"ran"}
    assert [o["task"] for o in ray["outcomes"]] == [o["task"] for o in local["outcomes"]]
    for label in ("semdedup", "kmq"):
        a = read_selection(local["outputs"]["selections"][label]).rows
        b = read_selection(ray["outputs"]["selections"][label]).rows
        assert a.tolist() == b.tolist()
