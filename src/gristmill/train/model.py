"""`ProxyLM`: a small decoder-only transformer for selection ablations, in plain PyTorch.

Pre-norm blocks, rotary positions indexed by `position_ids` (so a packed document sees the
same positions as it would alone), tied input/output embeddings. Packed rows hold several
documents, and attention never crosses a document boundary (ALGORITHMS.md 7.4): each token
attends to earlier tokens of its own segment only, through a block-diagonal causal boolean mask
given to `scaled_dot_product_attention` (O(L^2) mask memory per row, fine at proxy sizes).
Padding (segment id -1) attends to itself only, so no softmax row is empty and nothing is NaN.
On CUDA, `attention="flash"` uses FlashAttention's varlen kernel instead (`pip install
flash-attn`), with sequence boundaries derived from the same ids.

The loss follows the Hugging Face convention: `labels` equal `input_ids` and the model shifts
(position t predicts labels[t + 1]; -100 is ignored). `forward` returns the *summed* loss and
the label-token count so a trainer divides by the label tokens of the whole global batch, not
by a per-micro-batch mean (ALGORITHMS.md 7.4, the HF `num_items_in_batch` fix).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from gristmill.errors import ConfigError, MissingDependencyError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class ProxyConfig:
    """Shape of a `ProxyLM`.

    Attributes:
        vocab_size: token ids are in [0, vocab_size).
        d_model: residual width, divisible by `n_heads` into an even head size (RoPE).
        n_layers: transformer blocks.
        n_heads: attention heads.
        d_ff: hidden width of each MLP.
        max_seq_len: longest row the model accepts.
        dropout: dropout on attention outputs and MLPs (0 keeps training deterministic cheaply).
        attention: "sdpa" (block-diagonal mask, any device) or "flash" (varlen FlashAttention,
            CUDA with bf16/fp16 autocast and `flash-attn` installed).
    """

    vocab_size: int
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512
    max_seq_len: int = 2048
    dropout: float = 0.0
    attention: Literal["sdpa", "flash"] = "sdpa"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"ProxyConfig `{name}` must be a positive integer, got "
                                  f"{value!r}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"ProxyConfig `d_model` ({self.d_model}) must split into "
                              f"`n_heads` ({self.n_heads}) heads of an even size (RoPE); "
                              f"e.g. d_model={self.n_heads * 64}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"ProxyConfig `dropout` must be in [0, 1), got {self.dropout!r}")
        if self.attention not in ("sdpa", "flash"):
            raise ConfigError(f"ProxyConfig `attention` must be 'sdpa' or 'flash', got "
                              f"{self.attention!r}")

    @classmethod
    def cpu(cls, vocab_size: int, **overrides: int | float | str) -> ProxyConfig:
        """A few million parameters (about 0.8M in blocks plus the tied embedding)."""
        return cls(**{"vocab_size": vocab_size, "d_model": 128, "n_layers": 4, "n_heads": 4,
                      "d_ff": 512, "max_seq_len": 2048, **overrides})

    @classmethod
    def gpu(cls, vocab_size: int, **overrides: int | float | str) -> ProxyConfig:
        """GPT-2-small shape: about 85M parameters in blocks plus the tied embedding."""
        return cls(**{"vocab_size": vocab_size, "d_model": 768, "n_layers": 12, "n_heads": 12,
                      "d_ff": 3072, "max_seq_len": 2048, **overrides})

    def num_params(self) -> int:
        """Parameters of the model this config builds (the embedding counted once: tied)."""
        d, f = self.d_model, self.d_ff
        block = 2 * 2 * d + 4 * d * d + (d * f + f) + (f * d + d)  # 2 LayerNorms, qkv+out, MLP
        return self.vocab_size * d + self.n_layers * block + 2 * d  # + final LayerNorm


class ProxyOutput(NamedTuple):
    """`logits` (B, L, V); with labels, `loss_sum` (0-d float32) and `label_tokens` (int)."""

    logits: torch.Tensor
    loss_sum: torch.Tensor | None = None
    label_tokens: int = 0


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy with the HF shift, aligned with `labels`.

    Args:
        logits: (B, L, V) any float dtype (computed in float32).
        labels: (B, L) int64, -100 where there is nothing to predict.

    Returns:
        (B, L) float32: entry [b, t] is the loss of predicting labels[b, t] from position t - 1,
        0 where labels[b, t] is -100 (and at t = 0).
    """
    batch, length, vocab = logits.shape
    # Shift the (small) labels rather than slicing the (B, L, V) logits: a slice of the logits
    # costs a full-size copy forward and a zero-filled gradient backward.
    target = torch.full_like(labels, IGNORE_INDEX)
    target[:, :-1] = labels[:, 1:]
    per_pos = F.cross_entropy(logits.reshape(-1, vocab).float(), target.reshape(-1),
                              ignore_index=IGNORE_INDEX, reduction="none").view(batch, length)
    return F.pad(per_pos[:, :-1], (1, 0))


def label_count(labels: torch.Tensor) -> int:
    """Label tokens the shifted loss counts: labels[:, 1:] other than -100."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def document_mask(position_ids: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, L, L) bool, True where query i may attend key j.

    i attends j iff j <= i, both carry the same segment id and no position reset (a new
    document) lies between them; a padding token (segment id -1) attends to itself only.
    """
    # A position reset to 0 starts a new sequence, so two copies of a document that share an
    # id in one row (or a caller's unsegmented batch) still stay apart.
    seq = torch.cumsum((position_ids == 0).to(torch.int32), dim=1)
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (seq[:, :, None] ==
                                                                  seq[:, None, :])
    length = segment_ids.shape[1]
    idx = torch.arange(length, device=segment_ids.device)
    causal = idx[None, :] <= idx[:, None]
    pad = (segment_ids < 0)[:, :, None]
    diag = torch.eye(length, dtype=torch.bool, device=segment_ids.device)
    return torch.where(pad, diag, same & causal)[:, None]


def varlen_boundaries(position_ids: torch.Tensor,
                      segment_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """`(cu_seqlens, max_seqlen)` over the flattened (B * L) tokens, FlashAttention style.

    A sequence starts at each row start, each change of segment id and each position reset,
    so it matches the stream's `cu_seqlens` (padding tails are sequences of their own).
    """
    batch, length = segment_ids.shape
    start = torch.zeros_like(segment_ids, dtype=torch.bool)
    start[:, 0] = True
    start[:, 1:] = (segment_ids[:, 1:] != segment_ids[:, :-1]) | (position_ids[:, 1:] == 0)
    first = torch.nonzero(start.reshape(-1)).flatten()
    total = torch.tensor([batch * length], device=first.device)
    cu = torch.cat([first, total]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


class _Rotary(nn.Module):
    """Rotary position embedding (Su et al. 2021) at arbitrary integer positions."""

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        inv = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = position_ids[:, None, :, None].float() * self.inv_freq  # (B, 1, L, hd / 2)
        return angles.cos(), angles.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class _Block(nn.Module):
    def __init__(self, config: ProxyConfig) -> None:
        super().__init__()
        d = config.d_model
        self.n_heads, self.dropout, self.attention = config.n_heads, config.dropout, \
            config.attention
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.mlp = nn.Sequential(nn.Linear(d, config.d_ff), nn.GELU(),
                                 nn.Linear(config.d_ff, d), nn.Dropout(config.dropout))

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | tuple[torch.Tensor, int]) -> torch.Tensor:
        batch, length, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, length, 3, self.n_heads, -1).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, hd)
        q, k = _rotate(q, *rope), _rotate(k, *rope)
        p = self.dropout if self.training else 0.0
        if isinstance(mask, tuple):
            att = _flash(q, k, v, *mask, dropout=p)
        else:
            att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        x = x + F.dropout(self.proj(att.transpose(1, 2).reshape(batch, length, d)), p,
                          self.training)
        return x + self.mlp(self.norm2(x))


def _flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor,
           max_len: int, *, dropout: float) -> torch.Tensor:
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError as exc:  # pragma: no cover - GPU-only path
        raise MissingDependencyError("ProxyConfig(attention='flash') needs FlashAttention: "
                                     "pip install flash-attn (CUDA), or use "
                                     "attention='sdpa'") from exc
    batch, heads, length, hd = q.shape
    flat = [t.transpose(1, 2).reshape(batch * length, heads, hd) for t in (q, k, v)]
    out = flash_attn_varlen_func(*flat, cu, cu, max_len, max_len, dropout_p=dropout,
                                 causal=True)
    return out.view(batch, length, heads, hd).transpose(1, 2)


class ProxyLM(nn.Module):
    """Decoder-only transformer over packed rows; see the module docstring.

    Args:
        config: the model shape.

    Example:
        >>> model = ProxyLM(ProxyConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2,
        ...                             d_ff=64))
        >>> ids = torch.tensor([[5, 6, 7, 8]])
        >>> out = model(ids, torch.tensor([[0, 1, 0, 1]]), torch.tensor([[0, 0, 1, 1]]),
        ...             labels=torch.tensor([[-100, 6, -100, 8]]))
        >>> out.logits.shape, out.label_tokens
        (torch.Size([1, 4, 64]), 2)
    """

    def __init__(self, config: ProxyConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.rotary = _Rotary(config.d_model // config.n_heads)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model)
        self.apply(self._init)
        # GPT-2: scale residual projections by 1/sqrt(2 * layers) so the stream's variance
        # does not grow with depth.
        for block in self.blocks:
            for proj in (block.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                segment_ids: torch.Tensor, labels: torch.Tensor | None = None) -> ProxyOutput:
        """Logits for packed rows; with labels also the summed loss and label-token count.

        Args:
            input_ids: (B, L) int64 token ids.
            position_ids: (B, L) int64, restarting at 0 for each document.
            segment_ids: (B, L) int64 document of each token within the batch, -1 on padding.
            labels: (B, L) int64, HF convention (the model shifts), -100 ignored.

        Returns:
            `ProxyOutput(logits (B, L, V), loss_sum, label_tokens)`; `loss_sum` is None
            without labels.
        """
        length = input_ids.shape[1]
        if length > self.config.max_seq_len:
            raise ConfigError(f"rows of {length} tokens exceed the model's max_seq_len "
                              f"{self.config.max_seq_len}; raise ProxyConfig.max_seq_len")
        if self.config.attention == "flash" and input_ids.is_cuda:
            mask: torch.Tensor | tuple[torch.Tensor, int] = varlen_boundaries(position_ids,
                                                                              segment_ids)
        else:
            mask = document_mask(position_ids, segment_ids)
        rope = self.rotary(position_ids)
        x = F.dropout(self.embed(input_ids), self.config.dropout, self.training)
        for block in self.blocks:
            x = block(x, rope, mask)
        logits = F.linear(self.norm(x), self.embed.weight)  # tied embeddings
        if labels is None:
            return ProxyOutput(logits)
        return ProxyOutput(logits, token_losses(logits, labels).sum(), label_count(labels))
