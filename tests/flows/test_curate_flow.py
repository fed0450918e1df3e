"""The curate flow on a real corpus through Prefect: outputs, caching, artifacts, retries."""

from __future__ import annotations

import shutil

import pytest
from flowdata import small_recipe

from gristmill.errors import ConfigError
from gristmill.flows.recipe import load_recipe
from gristmill.flows.run import run_curate
from gristmill.storage.embeddings import EmbeddingStore
from gristmill.storage.selection import read_selection
from gristmill.storage.tokens import TokenStore

pytestmark = pytest.mark.usefixtures("prefect_harness")


def outcomes(result):
    return {o["task"]: o["outcome"] for o in result["outcomes"]}


def artifacts(key_prefix):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(like_=key_prefix)))
    return found


def test_curate_runs_then_hits_the_cache_then_redoes_what_is_gone(small_corpus, tmp_path):
    recipe = load_recipe(data=small_recipe(small_corpus, tmp_path / "out",
                                           ingest={"rows_per_shard": 60}))
    first = run_curate(recipe)
    tasks = ["ingest", "embed shard 0", "embed shard 1", "embed shard 2", "embed", "cluster",
             "select semdedup group 0", "select semdedup group 1", "select semdedup",
             "select dbp", "tokenizer", "tokenize"]
    assert outcomes(first) == dict.fromkeys(tasks, "ran")
    out = tmp_path / "out"
    dedup = read_selection(out / "selections" / "01-semdedup")
    pruned = read_selection(out / "selections" / "02-dbp")
    assert len(pruned.rows) == int(0.5 * len(dedup.rows) + 0.5)  # half rounds up
    tokens = TokenStore.open(out / "tokens")
    assert tokens.num_docs == len(pruned.rows)
    assert first["ran"] == 12 and first["cached"] == 0
    assert len(EmbeddingStore.open(out / "embeddings").manifest["shards"]) == 3

    second = run_curate(recipe)
    assert outcomes(second) == dict.fromkeys(tasks, "cached")
    assert second["outputs"] == first["outputs"]

    shutil.rmtree(out / "selections" / "02-dbp")
    third = run_curate(recipe)
    assert outcomes(third) == {**dict.fromkeys(tasks, "cached"), "select dbp": "ran",
                               "tokenize": "cached"}
    assert set(read_selection(out / "selections" / "02-dbp").rows) == set(pruned.rows)

    changed = load_recipe(data=small_recipe(small_corpus, tmp_path / "out",
                                            ingest={"rows_per_shard": 60},
                                            selectors=[{"method": "semdedup", "eps": 0.05},
                                                       {"method": "dbp", "budget": 0.4}]))
    fourth = run_curate(changed)
    assert outcomes(fourth)["select dbp"] == "ran" and outcomes(fourth)["tokenize"] == "ran"
    assert outcomes(fourth)["embed"] == "cached"


def test_artifacts_summary_table_and_plots(small_corpus, tmp_path):
    data = small_recipe(small_corpus, tmp_path / "out", name="artifact-check")
    run_curate(load_recipe(data=data))
    found = {a.key: a for a in artifacts("artifact-check-%")}
    summary = found["artifact-check-summary"]
    assert summary.type == "markdown"
    assert "Rows per domain, before and after each selector" in summary.data
    assert "data:image/png;base64," in summary.data  # the cluster-size and by-domain plots
    assert "| select dbp | ran |" in summary.data and "| embed shard 0 | ran |" in summary.data
    table = found["artifact-check-rows-by-domain"]
    assert table.type == "table"
    assert "semdedup" in str(table.data) and "python_docs" in str(table.data)


def test_a_flaky_io_error_is_retried(small_corpus, tmp_path, monkeypatch):
    import gristmill.selectors.run as run_module

    real = run_module.run_selection
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OSError("transient: stale NFS handle")
        return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "run_selection", flaky)
    data = small_recipe(small_corpus, tmp_path / "out",
                        selectors=[{"method": "random", "budget": 0.5}], tokenizer=None)
    result = run_curate(load_recipe(data=data))
    assert outcomes(result)["select random"] == "ran"
    assert len(calls) == 2


def test_a_bad_step_fails_without_retry_and_keeps_earlier_stores(small_corpus, tmp_path):
    data = small_recipe(small_corpus, tmp_path / "out",
                        selectors=[{"method": "semdedup", "eps": 0.05},
                                   {"method": "random", "budget": 100000}])
    with pytest.raises(ConfigError, match="pool holds only"):
        run_curate(load_recipe(data=data))
    out = tmp_path / "out"
    assert (out / "corpus" / "manifest.json").is_file()
    assert (out / "selections" / "01-semdedup" / "manifest.json").is_file()
    assert not (out / "selections" / "02-random").exists()
    assert not [p for p in (out / "selections").iterdir() if p.name.startswith(".")]


def test_per_cluster_groups_give_the_single_task_selection(small_corpus, tmp_path):
    """semdedup mapped over 3 cluster groups and merged == one semdedup over everything."""
    import pyarrow.parquet as pq

    from gristmill.selectors.run import run_selection

    data = small_recipe(small_corpus, tmp_path / "out", cluster_groups=3,
                        selectors=[{"method": "semdedup", "eps": 0.1}], tokenizer=None)
    result = run_curate(load_recipe(data=data))
    assert "select semdedup group 2" in outcomes(result)
    out = tmp_path / "out"
    single = run_selection("semdedup", corpus=out / "corpus", embeddings=out / "embeddings",
                           clusters=out / "clusters", out=tmp_path / "single",
                           params={"eps": 0.1})
    mapped = out / "selections" / "01-semdedup"
    for part in ("part-00000.parquet", "_dropped/part-00000.parquet"):
        a = pq.read_table(single.path / part).to_pydict()
        b = pq.read_table(mapped / part).to_pydict()
        assert a == b, part
