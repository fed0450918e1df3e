"""The embedding loop: a loaded model on one device turns token batches into vectors.

Throughput comes from the batch plan (length-sorted, token-budget batches), from collating and
pinning the next batch on a background thread while the model runs, from fp16/bf16 weights
under autocast on GPU (LayerNorm and softmax stay fp32), from `torch.inference_mode`, and from
syncing with the GPU once per chunk rather than once per batch. A GPU out-of-memory halves the
token budget and retries the batch; NaN/inf output stops the run and names the rows.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gristmill.embed.background import background
from gristmill.embed.batching import TokenizedTexts, collate, plan_batches, tokenize
from gristmill.embed.model import ModelSpec, load_tokenizer, resolve_model
from gristmill.embed.pooling import pool
from gristmill.errors import ConfigError, InputError, ModelError

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CPU_BATCH_TOKENS = 2048  # measured best on 2 cores: 35 docs/s vs 29 at 16,384 (RESULTS.md)
GPU_BATCH_TOKENS = 65536
OnBatch = Callable[[int, int], None]  # (documents, tokens) just embedded


class NonFiniteEmbeddings(ModelError):
    """The model produced NaN or inf for some inputs; `positions` are their indices."""

    def __init__(self, message: str, positions: np.ndarray) -> None:
        super().__init__(message)
        self.positions = positions


def resolve_device(device: str) -> torch.device:
    """`auto` is the first GPU when CUDA is available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device!r} is not a device; use auto, cpu, cuda or "
                          "cuda:N") from None
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (chosen.index or 0) >= count:
            raise ConfigError(f"--device {device}: this machine has {count} CUDA device(s); "
                              "use --device cpu or auto")
    elif chosen.type != "cpu":
        raise ConfigError(f"--device {device!r}: only cpu and cuda devices are supported")
    return chosen


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """`auto` is fp32 on CPU (exact) and fp16 on GPU."""
    if dtype == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is not supported; choose auto, "
                          f"{', '.join(DTYPES)}")
    return dtype


class Encoder:
    """One model, loaded on one device, with its tokenizer.

    Example:
        >>> encoder = Encoder(resolve_model(), device="cpu")      # doctest: +SKIP
        >>> vectors = encoder.embed(encoder.tokenize(["a text"]))  # doctest: +SKIP
    """

    def __init__(self, spec: ModelSpec, *, device: str = "auto", dtype: str = "auto",
                 compile_model: bool = False) -> None:
        from tokenizers import Tokenizer

        self.spec = spec
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        tokenizer = load_tokenizer(spec.path)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (tokenizer.eos_token_id or 0))
        self._backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self._backend.no_padding()
        self._backend.enable_truncation(spec.max_tokens)
        self.model = _load_weights(spec, self.device, DTYPES[self.dtype])
        if compile_model:
            self.model = torch.compile(self.model, dynamic=True)
        self.batch_tokens_cap: int | None = None  # lowered after an out-of-memory error

    def default_batch_tokens(self) -> int:
        if self.device.type == "cpu":
            return CPU_BATCH_TOKENS
        return GPU_BATCH_TOKENS if self.spec.dim <= 1024 else GPU_BATCH_TOKENS // 4

    def tokenize(self, texts: Sequence[str]) -> TokenizedTexts:
        return tokenize(self._backend, texts, self.spec.max_tokens, lowercase=self.spec.lowercase)

    def embed(self, tokens: TokenizedTexts, *, batch_tokens: int | None = None,
              on_batch: OnBatch | None = None) -> np.ndarray:
        """Embed tokenized texts; returns (n, dim) float32 in input order."""
        budget = batch_tokens or self.default_batch_tokens()
        out = np.empty((len(tokens), self.spec.dim), dtype=np.float32)
        if len(tokens) == 0:
            return out
        pinned = self.device.type == "cuda"
        batches = ((rows, *collate(tokens, rows, self.pad_id)) for rows in
                   plan_batches(tokens.lengths, budget))
        if pinned:
            batches = ((rows, ids.pin_memory(), mask.pin_memory()) for rows, ids, mask in batches)
        done_rows, done_vectors = [], []
        for rows, ids, mask in background(batches, depth=2):
            done_rows.append(rows)
            done_vectors.append(self._run_batch(ids, mask))
            if on_batch is not None:
                on_batch(len(rows), int(mask.sum()))
        vectors = torch.cat(done_vectors).cpu().numpy()  # one device sync per call
        out[np.concatenate(done_rows)] = vectors
        _check_finite(out)
        return out

    def _run_batch(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Forward one batch, splitting it when it exceeds the (lowered) token cap."""
        cap = self.batch_tokens_cap
        if cap is not None and ids.numel() > cap and len(ids) > 1:
            step = max(1, cap // ids.shape[1])
            return torch.cat([self._run_batch(ids[i:i + step], mask[i:i + step])
                              for i in range(0, len(ids), step)])
        try:
            return self._forward(ids, mask)
        except torch.OutOfMemoryError:
            if len(ids) == 1:
                raise ModelError(
                    f"one document of {ids.shape[1]} tokens does not fit in {self.device} "
                    "memory; lower --max-tokens or use a smaller --dtype") from None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.batch_tokens_cap = max(ids.shape[1], ids.numel() // 2)
            log.warning("out of memory on %s with a %d x %d batch: halving the token budget "
                        "to %d and retrying", self.device, *ids.shape, self.batch_tokens_cap)
            return self._run_batch(ids, mask)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        full = bool(mask.all())  # on the host copy: no device sync
        ids = ids.to(self.device, non_blocking=True)
        mask = mask.to(self.device, non_blocking=True)
        with torch.inference_mode(), self._autocast():
            # No mask when nothing is padded lets SDPA pick its fastest (flash) kernel.
            hidden = self.model(input_ids=ids, attention_mask=None if full else mask)
            vectors = pool(self.spec.pooling, hidden.last_hidden_state, mask)
            if self.spec.normalize:
                vectors = torch.nn.functional.normalize(vectors, dim=1)
        return vectors

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.dtype])


def _load_weights(spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Loading weights" bar per worker is noise
    try:
        model = AutoModel.from_pretrained(spec.path, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{spec.path}: cannot load the model's weights "
                         f"({str(exc).splitlines()[0][:200]})") from exc
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    if getattr(model.config, "is_encoder_decoder", False):
        model = model.get_encoder()  # T5-style: embed with the encoder stack
    return model.to(device).eval()


def _check_finite(vectors: np.ndarray) -> None:
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if len(bad):
        raise NonFiniteEmbeddings(
            f"model output is NaN or inf for {len(bad)} of {len(vectors)} texts (positions "
            f"{', '.join(map(str, bad[:5]))}{', ...' if len(bad) > 5 else ''}); with fp16 this "
            "is usually overflow: try --dtype bf16 or fp32", bad)


@functools.lru_cache(maxsize=2)
def _cached_encoder(spec: ModelSpec, device: str, dtype: str) -> Encoder:
    return Encoder(spec, device=device, dtype=dtype)


def load_encoder(model: str | Path | None = None, *, pooling: str | None = None,
                 max_tokens: int | None = None, normalize: bool | None = None,
                 device: str = "auto", dtype: str = "auto") -> Encoder:
    """A loaded encoder; the last two (model, settings, device) combinations stay cached."""
    spec = resolve_model(model, pooling=pooling, max_tokens=max_tokens, normalize=normalize)
    return _cached_encoder(spec, device, dtype)


def embed_texts(
    texts: Sequence[str],
    *,
    model: str | Path | None = None,
    pooling: str | None = None,
    max_tokens: int | None = None,
    normalize: bool | None = None,
    device: str = "auto",
    dtype: str = "auto",
    batch_tokens: int | None = None,
    encoder: Encoder | None = None,
) -> np.ndarray:
    """Embed a list of texts in memory; returns (n, dim) float32 rows in input order.

    Settings default to the model's own (see `resolve_model`). Pass `encoder` to reuse a loaded
    model; otherwise the last two loaded are cached.

    Example:
        >>> vectors = embed_texts(["How do I open a file?", "Read a file."])  # doctest: +SKIP
        >>> vectors.shape, float(vectors[0] @ vectors[1])                    # doctest: +SKIP
        ((2, 384), 0.78...)
    """
    if isinstance(texts, str):
        raise InputError("texts must be a list of strings, got one string; wrap it in a list")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise InputError(f"texts[{bad}] is {type(texts[bad]).__name__}, not str")
    if encoder is None:
        encoder = load_encoder(model, pooling=pooling, max_tokens=max_tokens,
                               normalize=normalize, device=device, dtype=dtype)
    return encoder.embed(encoder.tokenize(texts), batch_tokens=batch_tokens)

