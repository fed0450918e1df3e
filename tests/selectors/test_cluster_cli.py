"""`gristmill cluster` and `gristmill select` end to end on real stores, and their bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from gristmill.cli import app
from gristmill.storage.clusters import ClusterStore
from gristmill.storage.embeddings import EmbeddingStore
from gristmill.storage.selection import read_selection

runner = CliRunner()


def cli(*args: object) -> object:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def clustered(real_stores, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cl") / "clusters"
    result = cli("cluster", real_stores["emb"], "--k", 6, "--out", out, "--seed", 1)
    assert result.exit_code == 0, result.output
    return out


def test_cluster_layout_manifest_and_rows(clustered, real_stores):
    store = ClusterStore.open(clustered)
    m = store.manifest
    assert m["k"] == 6 and m["spherical"] and m["dist"] == "cosine_similarity"
    assert m["index"] == "IndexFlatIP" and m["train_sample_rows"] == real_stores["rows"]
    assert (clustered / "centroids.npy").is_file() and (clustered / "cluster_sizes.png").is_file()
    labels, dist = store.read_all()
    assert len(labels) == real_stores["rows"] and sum(m["sizes"]) == real_stores["rows"]
    np.testing.assert_array_equal(np.bincount(labels, minlength=6), m["sizes"])
    # dist is the cosine similarity of each unit row to its own centroid, the best one.
    vectors = EmbeddingStore.open(real_stores["emb"]).to_numpy()
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = vectors @ store.centroids().T
    np.testing.assert_array_equal(labels, sims.argmax(axis=1))
    np.testing.assert_allclose(dist, sims.max(axis=1), atol=1e-5)
    # One Parquet file per corpus shard, row-aligned.
    assert [s["rows"] for s in m["shards"]] == [50, 50, 26]
    # Few points per centroid is a warning, recorded in the manifest.
    assert any("per centroid" in note for note in m["warnings"])


def test_cluster_rerun_is_up_to_date_and_sample_is_explicit(clustered, real_stores, tmp_path):
    before = (clustered / "manifest.json").stat().st_mtime_ns
    again = cli("cluster", real_stores["emb"], "--k", 6, "--out", clustered, "--seed", 1)
    assert again.exit_code == 0 and "up to date" in again.output
    assert (clustered / "manifest.json").stat().st_mtime_ns == before
    small = cli("cluster", real_stores["emb"], "--k", 8, "--sample-per-centroid", 5,
                "--no-spherical", "--out", tmp_path / "l2")
    assert small.exit_code == 0, small.output
    m = ClusterStore.open(tmp_path / "l2").manifest
    assert m["train_sample_rows"] == 40 and m["faiss_subsampled"]
    assert m["dist"] == "squared_l2" and m["index"] == "IndexFlatL2"


def test_k_auto_says_what_it_chose(real_stores, tmp_path):
    result = cli("cluster", real_stores["emb"], "--out", tmp_path / "auto")
    assert result.exit_code == 0, result.output
    m = ClusterStore.open(tmp_path / "auto").manifest
    assert m["k"] == 8 and "sqrt(n/2)" in m["k_rule"]  # sqrt(126/2) = 7.9, clamped to 8
    assert "auto" in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--k", "500"], "only 126 rows"),
    (["--k", "0"], "at least 1"),
    (["--k", "many"], "'auto'"),
    (["--device", "cuda"], "no GPU support"),
])
def test_cluster_bad_options(real_stores, tmp_path, args, message):
    result = cli("cluster", real_stores["emb"], "--out", tmp_path / "bad", *args)
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad*"))


def test_nan_embeddings_are_named(real_stores, tmp_path):
    broken = tmp_path / "emb"
    shutil.copytree(real_stores["emb"], broken)
    array = np.load(broken / "part-00001.npy", mmap_mode="r+")
    array[[4, 7]] = np.nan
    array.flush()
    result = cli("cluster", broken, "--k", 4, "--out", tmp_path / "cl")
    assert result.exit_code == 2 and "rows [54, 57]" in result.output
    chosen = cli("select", "random", "--corpus", real_stores["corpus"], "--embeddings", broken,
                 "--budget", 10, "--out", tmp_path / "sel")
    assert chosen.exit_code == 2 and "[54, 57]" in chosen.output
    assert not (tmp_path / "sel").exists() and not (tmp_path / "cl").exists()


def select(real_stores, out: Path, method: str, *args: object) -> object:
    return cli("select", method, "--corpus", real_stores["corpus"], "--embeddings",
               real_stores["emb"], "--out", out, *args)


def test_random_selection_store(real_stores, tmp_path):
    out = tmp_path / "sel"
    result = select(real_stores, out, "random", "--budget", "0.25", "--seed", 4)
    assert result.exit_code == 0, result.output
    assert "python_docs" in result.output  # the per-domain before/after table
    table = pq.read_table(out / "part-00000.parquet")
    assert table.column_names[:6] == ["id", "row", "weight", "selector", "score", "cluster"]
    assert table.num_rows == round(0.25 * real_stores["rows"])
    rows = table.column("row").to_numpy()
    assert np.all(np.diff(rows) > 0)
    dropped = pq.read_table(out / "_dropped" / "part-00000.parquet")
    assert dropped.num_rows + table.num_rows == real_stores["rows"]
    assert set(dropped.column("reason").to_pylist()) == {"not_sampled"}
    m = json.loads((out / "manifest.json").read_text())
    assert m["selector"] == "random" and m["seed"] == 4 and m["budget"]["spec"] == "0.25"
    assert m["corpus_fingerprint"] and m["embeddings"]["fingerprint"]
    assert (out / "_stats" / "by_domain.png").is_file()
    assert sum(d["selected"] for d in m["by_domain"]) == table.num_rows
    assert read_selection(out).rows.tolist() == rows.tolist()


@pytest.mark.parametrize(("budget", "message"), [
    ("0", "at least 1"), ("-3", "at least 1"), ("127", "only 126"), ("1.5", "(0, 1]"),
    ("0.0", "(0, 1]"), ("lots", "row count"),
])
def test_bad_budgets(real_stores, tmp_path, budget, message):
    result = select(real_stores, tmp_path / "sel", "random", "--budget", budget)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "sel").exists()


def test_unknown_method_lists_the_registry(real_stores, tmp_path):
    result = select(real_stores, tmp_path / "sel", "magic", "--budget", 5)
    assert result.exit_code == 2 and "semdedup" in result.output and "kcenter" in result.output


def test_semdedup_then_dbp_compose(real_stores, clustered, tmp_path):
    dedup = tmp_path / "dedup"
    result = select(real_stores, dedup, "semdedup", "--clusters", clustered, "--eps", "0.001")
    assert result.exit_code == 0, result.output
    dropped = pq.read_table(dedup / "_dropped" / "part-00000.parquet").to_pylist()
    assert {d["reason"] for d in dropped} == {"near_duplicate"}
    # Each planted exact copy or its original goes (whichever comes later in the order).
    copies = set(real_stores["copies"])
    originals = {c.removeprefix("copy-of-") for c in copies}
    gone = {d["id"] for d in dropped}
    assert len(gone & (copies | originals)) == len(copies)
    # The dropped file names what each dropped row duplicates: its planted twin.
    pair = {c: c.removeprefix("copy-of-") for c in copies} | {
        c.removeprefix("copy-of-"): c for c in copies}
    for row in dropped:
        if row["id"] in pair:
            assert row["related_id"] == pair[row["id"]] and row["score"] > 0.999
    pruned = tmp_path / "dbp"
    result = cli("select", "dbp", "--corpus", real_stores["corpus"], "--embeddings",
                 real_stores["emb"], "--clusters", clustered, "--pool", dedup, "--budget",
                 "0.5", "--out", pruned)
    assert result.exit_code == 0, result.output
    m = json.loads((pruned / "manifest.json").read_text())
    pool_rows = read_selection(dedup).rows
    assert m["pool"]["rows"] == len(pool_rows) and m["rows"] == round(0.5 * len(pool_rows))
    assert set(read_selection(pruned).rows) <= set(pool_rows)
    assert [step["selector"] for step in m["lineage"]] == ["semdedup", "dbp"]


def test_pairwise_methods_refuse_l2_clusters(real_stores, tmp_path):
    l2 = tmp_path / "l2"
    assert cli("cluster", real_stores["emb"], "--k", 4, "--no-spherical", "--out", l2
               ).exit_code == 0
    for method, extra in (("semdedup", ["--eps", "0.1"]), ("dbp", ["--budget", "10"])):
        result = select(real_stores, tmp_path / method, method, "--clusters", l2, *extra)
        assert result.exit_code == 2 and "spherical" in result.output
        assert not (tmp_path / method).exists()


@pytest.mark.parametrize("eps", ["0", "2", "-0.5"])
def test_eps_outside_the_open_interval(real_stores, clustered, tmp_path, eps):
    result = select(real_stores, tmp_path / "sel", "semdedup", "--clusters", clustered,
                    "--eps", eps)
    assert result.exit_code == 2 and "eps" in result.output and not (tmp_path / "sel").exists()


def test_mismatched_stores_are_refused(real_stores, clustered, tmp_path, demo_records):
    import pyarrow as pa

    from gristmill import ingest

    source = tmp_path / "other.parquet"
    pq.write_table(pa.Table.from_pylist(
        [{"id": r["id"], "text": r["text"], "domain": r["domain"]} for r in demo_records[:30]]),
        source)
    other = ingest([source], tmp_path / "other", domain_field="domain", id_field="id",
                   progress=False)
    result = cli("select", "random", "--corpus", other.path, "--embeddings", real_stores["emb"],
                 "--budget", 5, "--out", tmp_path / "sel")
    assert result.exit_code == 2 and "fingerprint" in result.output
    # Clusters computed from other embeddings.
    other_emb = tmp_path / "emb2"
    shutil.copytree(real_stores["emb"], other_emb)
    manifest = json.loads((other_emb / "manifest.json").read_text())
    manifest["fingerprint"] = "0" * 16
    (other_emb / "manifest.json").write_text(json.dumps(manifest))
    result = cli("select", "kmq", "--corpus", real_stores["corpus"], "--embeddings", other_emb,
                 "--clusters", clustered, "--budget", 5, "--out", tmp_path / "sel")
    assert result.exit_code == 2 and "computed from embeddings" in result.output
    assert not (tmp_path / "sel").exists()


def test_target_with_another_dimension(real_stores, tmp_path):
    target = tmp_path / "target.npy"
    np.save(target, np.ones((3, 17), dtype=np.float32))
    result = select(real_stores, tmp_path / "sel", "rds", "--budget", 5, "--target", target)
    assert result.exit_code == 2 and "17" in result.output and "384" in result.output


def test_kmq_clusters_on_the_fly_and_keeps_them(real_stores, tmp_path):
    out = tmp_path / "kmq"
    result = select(real_stores, out, "kmq", "--k", 5, "--budget", 30)
    assert result.exit_code == 0, result.output
    assert ClusterStore.open(out / "_clusters").k == 5
    assert read_selection(out).rows.size == 30
    assert not list(tmp_path.glob(".kmq*"))
    missing = select(real_stores, tmp_path / "x", "kmq", "--budget", 30)
    assert missing.exit_code == 2 and "--clusters" in missing.output


@pytest.mark.gpu
def test_gpu_clustering_matches_cpu_quality(real_stores, tmp_path):
    """faiss-gpu k-means gives the same kind of answer as CPU (centroids differ by device,
    ALGORITHMS.md 10.5): every row assigned, inertia within 5 %."""
    faiss = pytest.importorskip("faiss")
    if faiss.get_num_gpus() == 0:
        pytest.skip("faiss has no GPU support here (faiss-cpu)")
    from gristmill.selectors.clustering import cluster_embeddings

    cpu = cluster_embeddings(real_stores["emb"], tmp_path / "cpu", k=6, device="cpu")
    gpu = cluster_embeddings(real_stores["emb"], tmp_path / "gpu", k=6, device="cuda")
    assert gpu.store.manifest["device"].endswith("GPU(s)")
    assert sum(gpu.store.manifest["sizes"]) == real_stores["rows"]
    ratio = gpu.store.manifest["mean_inertia"] / cpu.store.manifest["mean_inertia"]
    assert 0.95 <= ratio <= 1.05


def test_embeddings_of_a_selection_cluster_only_their_rows(real_stores, tmp_path):
    """Rows outside an `embed --selection` are NaN by design: cluster -1, and a selector
    whose pool is that selection works on the embedded rows only."""
    from gristmill.embed import embed_store

    sel = tmp_path / "sel"
    assert select(real_stores, sel, "random", "--budget", 40, "--seed", 2).exit_code == 0
    partial = embed_store(real_stores["corpus"], tmp_path / "emb", selection=sel,
                          max_tokens=64).store.path
    result = cli("cluster", partial, "--k", 4, "--out", tmp_path / "cl")
    assert result.exit_code == 0, result.output
    labels, dist = ClusterStore.open(tmp_path / "cl").read_all()
    chosen = read_selection(sel).rows
    assert np.all(labels[chosen] >= 0) and np.isfinite(dist[chosen]).all()
    outside = np.setdiff1d(np.arange(real_stores["rows"]), chosen)
    assert np.all(labels[outside] == -1) and np.isnan(dist[outside]).all()
    assert ClusterStore.open(tmp_path / "cl").manifest["clustered_rows"] == 40
    kept = cli("select", "kmq", "--corpus", real_stores["corpus"], "--embeddings", partial,
               "--clusters", tmp_path / "cl", "--pool", sel, "--budget", 12,
               "--out", tmp_path / "kmq")
    assert kept.exit_code == 0, kept.output
    assert set(read_selection(tmp_path / "kmq").rows) <= set(chosen)
    whole = cli("select", "random", "--corpus", real_stores["corpus"], "--embeddings",
                partial, "--budget", 5, "--out", tmp_path / "bad")
    assert whole.exit_code == 2 and "NaN" in whole.output
