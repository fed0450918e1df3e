"""CoLM mini-batch coresets (Nguyen et al., ICLR 2025; ALGORITHMS.md section 1) as a batch filter.

Method. Per optimizer step the trainer draws a *big* batch (`group_size` candidate micro-batches
per kept one) and the filter returns a coreset of its documents whose Adam update matches the
big batch's, so back-propagation (and activation memory) covers only the coreset. An example
is one document segment (one `segments[]` record). Per call:

1. Budget: keep `ceil(keep_fraction * n)` of the n examples (the paper's |S| = rho |B_big|,
   counted in examples, not tokens).
2. Small sources: every example of a small domain goes into S unconditionally (1.1, fix 1).
   Small domains are `small_sources`, or with None those holding < `small_share` of the big
   batch's examples. If they overflow the budget, the first ones in batch order are kept.
3. Features: the exact per-example gradient g_i of the last block's MLP output projection
   W = blocks[-1].mlp[2].weight (d x d_ff), of document i's mean token loss.
4. Adam normalisation (1.2 step 3): u_i = m_hat_i / (sqrt(v_hat_i) + eps) with
   m_i = b1 m + (1 - b1) g_i, v_i = b2 v + (1 - b2) g_i^2, bias-corrected for the coming step.
   (m, v) are the optimizer's `exp_avg` / `exp_avg_sq` for W once `attach(optimizer)` gave
   it and it has state; otherwise a shadow state updated with the mean over the selected
   examples, as the reference does. At step 0 this is u_i = sign(g_i).
5. Per source, keep the `feature_dim` coordinates of largest |mean u| (1.2 step 4).
6. Quotas q_c = floor(n_c / n * b), the remainder +1 to the smallest q_c (1.2 step 5).
7. Greedy facility location per source on s_ij = (1 + cos) / 2 (or max(dist) - dist): raw
   cosine can be negative and the (1 - 1/e) guarantee needs s_ij >= 0 (1.7).
8. The chosen documents are repacked densely (first-fit decreasing) into micro-batches of the
   input's rows and seq_len, tokens, labels and positions copied from their source slices.

Weights. The default trains the coreset unweighted, as the reference does. That covers the
big batch (every kind of document gets a medoid) but does not match its mean gradient: on the
test corpus the unweighted coreset's full-model gradient is *further* from the big batch's
than a random subset's (relative error 0.51 vs 0.33, tests/train/test_colm.py). With
`weighted=True` each medoid carries CRAIG's gamma (1.2 step 7) in the output's `loss_weights`,
and the weighted gradient is 10x closer than random (0.027 vs 0.27); the trainer has to apply
those weights for this to reach the update.

Why not the reference's zeroth-order features. The reference estimates g_i = c_i z with one
MeZO direction z drawn once for the whole run, so every feature is collinear: cosines are
+-1 and the selection is a function of one scalar per example (1.7). Here the features are
exact and cheap: attention is block-diagonal, and W only feeds the final residual stream x_t
through the per-token norm and head, so with delta_t = dL/dx_t (from a backward through the
norm and head only) and a_t the input of W, document i's gradient is sum_{t in i} delta_t a_t^T.

Cost: one no-grad forward of the big batch, one backward through norm + head, and n x d x d_ff
floats of per-example gradients (n is a few hundred); the coreset is then trained with an
ordinary forward/backward.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gristmill.errors import ConfigError, InputError
from gristmill.packing.rows import layout_rows
from gristmill.train.model import IGNORE_INDEX, token_losses

SIMILARITIES = ("cosine", "euclidean", "l1")
Example = tuple[int, int]  # (batch index, segment index)


class ColmFilter:
    """CoLM coreset selection as a trainer batch filter (see the module docstring).

    Args:
        keep_fraction: share of the big batch's examples to keep, in (0, 1].
        group_size: candidate micro-batches drawn per kept micro-batch (>= 1).
        small_sources: domains always kept whole; None decides by `small_share`.
        small_share: with `small_sources=None`, a domain holding fewer than this share of the
            big batch's examples is small, in [0, 1).
        feature_dim: coordinates kept per source after sparsification (>= 1).
        similarity: "cosine" ((1 + cos) / 2), "euclidean" or "l1" (max(dist) - dist).
        betas, eps: Adam constants of the shadow state (the optimizer's own once attached).
        weighted: CRAIG weights (1.2 step 7): each medoid stands for the source examples
            closest to it. The output then carries `loss_weights` (R, L) float32 and a
            `weight` per segment, scaled so the mean weight per label token is 1; a trainer
            must compute sum(loss_t * w_t) / label_tokens for them to count (`train` does
            not yet: it trains unweighted, the reference's default).
        pad_id: padding token of the output; None takes the inputs' padding (else 0).
        optimizer: same as `attach(optimizer)`.

    Attributes:
        last_selected: (batch index, segment index) of the kept examples, in input order.
        last_weights: their CRAIG weights (unscaled: examples each one stands for).
        last_kept_small: the small-source examples among them.
        last_features: per large source, the sparsified normalised features (n_c, k) float32.
        last_stats: examples, kept_small, budget, quotas (per large source), adam ("optimizer"
            or "shadow").
    """

    def __init__(self, keep_fraction: float = 0.5, *, group_size: int = 2,
                 small_sources: Collection[str] | None = None, small_share: float = 0.1,
                 feature_dim: int = 2560, similarity: str = "cosine",
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weighted: bool = False, pad_id: int | None = None,
                 optimizer: torch.optim.Optimizer | None = None) -> None:
        _check_options(keep_fraction, group_size, small_sources, small_share, feature_dim,
                       similarity)
        self.keep_fraction, self.group_size = float(keep_fraction), group_size
        self.small_sources = None if small_sources is None else frozenset(small_sources)
        self.small_share, self.feature_dim, self.similarity = small_share, feature_dim, similarity
        self.betas, self.eps, self.pad_id, self.weighted = betas, eps, pad_id, bool(weighted)
        self.optimizer = optimizer
        self.shadow: tuple[torch.Tensor, torch.Tensor, int] | None = None  # (m, v, steps)
        self.last_selected: list[Example] = []
        self.last_kept_small: list[Example] = []
        self.last_weights: list[float] = []
        self.last_features: dict[str, torch.Tensor] = {}
        self.last_stats: dict[str, Any] = {}

    def attach(self, optimizer: torch.optim.Optimizer) -> ColmFilter:
        """Normalise by `optimizer`'s Adam moments of W (returns self)."""
        self.optimizer = optimizer
        return self

    def __call__(self, model: nn.Module, batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
        examples = _examples(batches)
        self.last_stats = {"adam": None}
        domains = [batches[b]["segments"][s]["domain"] for b, s in examples]
        budget = math.ceil(self.keep_fraction * len(examples))
        small = self._small_domains(domains)
        kept = [e for e, d in zip(examples, domains, strict=True) if d in small][:budget]
        large: dict[str, list[Example]] = {}
        for e, d in zip(examples, domains, strict=True):
            if d not in small:
                large.setdefault(d, []).append(e)
        quotas = proportional_quotas([len(v) for v in large.values()], budget - len(kept))
        chosen = self._select(model, batches, large, quotas)
        weight = dict.fromkeys(kept, 1.0) | chosen
        self.last_selected = sorted(weight)
        self.last_weights = [weight[e] for e in self.last_selected]
        self.last_kept_small = kept
        self.last_stats = {"examples": len(examples), "kept_small": len(kept), "budget": budget,
                           "quotas": dict(zip(large, quotas, strict=True)),
                           "adam": self.last_stats["adam"]}
        pad_id = self.pad_id if self.pad_id is not None else _infer_pad(batches)
        return repack_examples(batches, self.last_selected, pad_id=pad_id,
                               weights=self.last_weights if self.weighted else None)

    def _small_domains(self, domains: list[str]) -> set[str]:
        if self.small_sources is not None:
            return set(self.small_sources)
        counts = {d: domains.count(d) for d in set(domains)}
        return {d for d, c in counts.items() if c < self.small_share * len(domains)}

    def _select(self, model: nn.Module, batches: list[dict[str, Any]],
                large: dict[str, list[Example]], quotas: list[int]) -> dict[Example, float]:
        """{example: CRAIG weight} by facility location per large source (gradients only
        when some source is cut)."""
        self.last_features = {}
        if all(q >= len(v) for q, v in zip(quotas, large.values(), strict=True)):
            return {e: 1.0 for v in large.values() for e in v}
        flat = [e for v in large.values() for e in v]
        grads = example_gradients(model, batches, flat).flatten(1)
        m_prev, v_prev, step, (b1, b2), eps = self._moments(model, grads)
        m_i = b1 * m_prev + (1 - b1) * grads
        v_i = b2 * v_prev + (1 - b2) * grads.square()
        u = adam_directions(m_i, v_i, step, betas=(b1, b2), eps=eps)
        chosen: dict[Example, float] = {}
        chosen_rows: list[int] = []
        at = 0
        for (name, members), quota in zip(large.items(), quotas, strict=True):
            rows = torch.arange(at, at + len(members), device=u.device)
            at += len(members)
            feats = _sparsify(u[rows], self.feature_dim)
            self.last_features[name] = feats
            sim = pairwise_similarity(feats, self.similarity)
            picks = greedy_facility_location(sim, quota) if quota < len(members) else \
                list(range(len(members)))
            chosen |= dict(zip((members[p] for p in picks), craig_weights(sim, picks),
                               strict=True))
            chosen_rows += rows[picks].tolist()
        if self.last_stats["adam"] == "shadow" and chosen_rows:
            # The reference's history: the mean moments of the selected large-source examples.
            self.shadow = (m_i[chosen_rows].mean(0), v_i[chosen_rows].mean(0), step + 1)
        return chosen

    def _moments(self, model: nn.Module, grads: torch.Tensor) -> tuple[
            torch.Tensor, torch.Tensor, int, tuple[float, float], float]:
        """(m, v, steps taken, betas, eps): the optimizer's for W if it has them, else shadow."""
        weight = _target(model)
        state = self.optimizer.state.get(weight, {}) if self.optimizer is not None else {}
        if "exp_avg" in state and "exp_avg_sq" in state:
            group = next(g for g in self.optimizer.param_groups  # type: ignore[union-attr]
                         if any(p is weight for p in g["params"]))
            self.last_stats["adam"] = "optimizer"
            return (state["exp_avg"].reshape(-1).float(), state["exp_avg_sq"].reshape(-1).float(),
                    int(state["step"]), tuple(group["betas"]), float(group["eps"]))
        self.last_stats["adam"] = "shadow"
        if self.shadow is None or self.shadow[0].shape != grads.shape[1:]:
            zero = torch.zeros_like(grads[0])
            self.shadow = (zero, zero.clone(), 0)
        return (*self.shadow, self.betas, self.eps)


def colm(keep_fraction: float = 0.5, **kwargs: Any) -> ColmFilter:
    """A CoLM coreset filter: train on `keep_fraction` of each big batch's documents."""
    return ColmFilter(keep_fraction, **kwargs)


def example_gradients(model: nn.Module, batches: list[dict[str, Any]],
                      examples: list[Example]) -> torch.Tensor:
    """Exact gradient of each example's mean token loss w.r.t. blocks[-1].mlp[2].weight.

    One no-grad forward per micro-batch (eval mode) captures the input a_t of that Linear and
    the final residual x_t; a backward through the final norm and tied head only gives
    delta_t = dL/dx_t, and G_i = sum_{t in i} delta_t a_t^T. Leaves no `.grad` on parameters.

    Returns:
        (len(examples), d_model, d_ff) float32, zeros for an example without label tokens.
    """
    weight = _target(model)
    out = torch.zeros(len(examples), *weight.shape, device=weight.device)
    wanted: dict[int, list[tuple[int, int]]] = {}
    for k, (b, s) in enumerate(examples):
        wanted.setdefault(b, []).append((k, s))
    was_training = model.training
    model.eval()
    try:
        for b, members in wanted.items():
            acts, delta = _head_backward(model, batches[b])
            segments = batches[b]["segments"]
            for k, s in members:
                rec = segments[s]
                cols = slice(rec["offset"], rec["offset"] + rec["end"] - rec["start"])
                out[k] = delta[rec["row"], cols].T @ acts[rec["row"], cols]
    finally:
        model.train(was_training)
    return out


def _head_backward(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, delta): (R, L, d_ff) inputs of W and (R, L, d) per-document mean-loss gradients."""
    captured: dict[str, torch.Tensor] = {}
    block = model.blocks[-1]
    hooks = [block.mlp[2].register_forward_hook(
                 lambda mod, args, res: captured.__setitem__("a", args[0])),
             block.register_forward_hook(lambda mod, args, res: captured.__setitem__("x", res))]
    try:
        with torch.no_grad():
            model(batch["input_ids"], batch["position_ids"], batch["segment_ids"])
    finally:
        for hook in hooks:
            hook.remove()
    labels, seg = batch["labels"], batch["segment_ids"]
    x = captured["x"].detach().float().requires_grad_(True)
    with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
        logits = F.linear(model.norm(x), model.embed.weight.float())
        losses = token_losses(logits, labels)
        counted = (labels != IGNORE_INDEX) & (seg >= 0)
        counted[:, 0] = False
        ids = torch.where(counted, seg, torch.zeros_like(seg))
        per_doc = torch.bincount(ids[counted], minlength=max(int(seg.max()) + 1, 1)).clamp(min=1)
        weights = torch.where(counted, 1.0 / per_doc[ids].float(), torch.zeros_like(losses))
        (delta,) = torch.autograd.grad((losses * weights).sum(), [x])
    return captured["a"].float(), delta


def adam_directions(m: torch.Tensor, v: torch.Tensor, steps: int, *,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.Tensor:
    """Bias-corrected Adam update u = m_hat / (sqrt(v_hat) + eps) for the (steps + 1)-th step.

    Args:
        m, v: (n, D) float moments including the candidate gradient; steps: steps taken.
    """
    m_hat = m / (1 - betas[0] ** (steps + 1))
    v_hat = v / (1 - betas[1] ** (steps + 1))
    return m_hat / (v_hat.sqrt() + eps)


def _sparsify(u: torch.Tensor, feature_dim: int) -> torch.Tensor:
    """(n, D) -> (n, k): the k <= feature_dim columns of largest |mean over rows|."""
    if feature_dim >= u.shape[1]:
        return u
    top = torch.topk(u.mean(0).abs(), feature_dim, sorted=False).indices
    return u[:, top.sort().values]


def proportional_quotas(sizes: list[int], budget: int) -> list[int]:
    """CoLM's per-source quotas: floor(n_c / n * budget), remainder +1 to the smallest.

    Ties go to the earlier source; each quota stays within +1 of its floor and the quotas sum
    to `budget` (0 <= budget <= sum(sizes)).

    Example:
        >>> proportional_quotas([6, 3, 1], 5)
        [3, 1, 1]
    """
    total = sum(sizes)
    if budget <= 0 or total == 0:
        return [0] * len(sizes)
    quotas = [n * budget // total for n in sizes]
    for c in sorted(range(len(sizes)), key=lambda c: (quotas[c], c))[:budget - sum(quotas)]:
        quotas[c] += 1
    return quotas


def pairwise_similarity(features: torch.Tensor, similarity: str = "cosine") -> torch.Tensor:
    """(n, n) non-negative similarities: (1 + cos) / 2, or max(dist) - dist (euclidean, l1)."""
    feats = features.float()
    if similarity == "cosine":
        unit = feats / feats.norm(dim=1, keepdim=True).clamp(min=1e-30)
        return ((1 + unit @ unit.T) / 2).clamp(0, 1)
    dist = torch.cdist(feats, feats, p=2.0 if similarity == "euclidean" else 1.0)
    return dist.max() - dist


def greedy_facility_location(similarity: torch.Tensor, budget: int) -> list[int]:
    """Greedy argmax of F(A) = sum_i max_{j in A} s_ij, in pick order (ties: lowest index).

    Args:
        similarity: (n, n) float, s_ij >= 0, row i a point and column j a candidate.
        budget: picks, 0 <= budget <= n.
    """
    n = similarity.shape[0]
    cover = torch.zeros(n, dtype=similarity.dtype, device=similarity.device)
    free = torch.ones(n, dtype=torch.bool, device=similarity.device)
    picks: list[int] = []
    for _ in range(min(budget, n)):
        gains = (similarity - cover[:, None]).clamp(min=0).sum(0)
        gains = torch.where(free, gains, torch.full_like(gains, -1.0))
        j = int(torch.argmax(gains))
        picks.append(j)
        free[j] = False
        cover = torch.maximum(cover, similarity[:, j])
    return picks


def craig_weights(similarity: torch.Tensor, picks: list[int]) -> list[float]:
    """CRAIG's gamma_j: points whose most similar pick is j (ties: the earlier pick).

    Sums to n; a pick is its own most similar point, so every weight is >= 1.
    """
    if not picks:
        return []
    nearest = similarity[:, picks].argmax(1)
    nearest[picks] = torch.arange(len(picks), device=nearest.device)
    return torch.bincount(nearest, minlength=len(picks)).float().tolist()


def repack_examples(batches: list[dict[str, Any]], chosen: list[Example], *,
                    pad_id: int = 0, weights: list[float] | None = None
                    ) -> list[dict[str, Any]]:
    """The `chosen` segments packed first-fit decreasing into stream-format micro-batches.

    Rows have the inputs' seq_len and each batch the inputs' row count; a segment's input_ids,
    labels and position_ids are copied from its source slice, padding is `pad_id`, label -100,
    segment -1 and restarting positions, as `GristmillStream` lays it out. With `weights`
    (one per chosen example), they are rescaled to a mean of 1 per label token and written to
    `loss_weights` (R, L) float32 (0 on padding) and each segment's `weight`.
    """
    rows_per, seq_len = (int(n) for n in batches[0]["input_ids"].shape)
    device = batches[0]["input_ids"].device
    lengths = [batches[b]["segments"][s]["end"] - batches[b]["segments"][s]["start"]
               for b, s in chosen]
    bins: list[list[int]] = []
    fill: list[int] = []
    for k in sorted(range(len(chosen)), key=lambda k: -lengths[k]):
        row = next((r for r, used in enumerate(fill) if used + lengths[k] <= seq_len), None)
        if row is None:
            bins.append([])
            fill.append(0)
            row = len(bins) - 1
        bins[row].append(k)
        fill[row] += lengths[k]
    cpu = [{key: b[key].cpu() for key in ("input_ids", "labels", "position_ids")}
           for b in batches]
    extra = {"epoch": batches[0]["epoch"]} if "epoch" in batches[0] else {}
    scaled = None if weights is None else _per_token_scale(batches, cpu, chosen, weights)
    return [_lay_out(bins[at:at + rows_per], chosen, batches, cpu, rows_per, seq_len, pad_id,
                     device, scaled) | extra for at in range(0, len(bins), rows_per)]


def _per_token_scale(batches: list[dict[str, Any]], cpu: list[dict[str, torch.Tensor]],
                     chosen: list[Example], weights: list[float]) -> list[float]:
    """`weights` times N / sum(w_j n_j): the weighted loss keeps the trainer's 1/N scale."""
    labels = []
    for b, s in chosen:
        rec = batches[b]["segments"][s]
        cols = cpu[b]["labels"][rec["row"], rec["offset"]:rec["offset"] + rec["end"] -
                                rec["start"]]
        labels.append(int((cols != IGNORE_INDEX).sum()))
    mass = sum(w * n for w, n in zip(weights, labels, strict=True))
    return [w * sum(labels) / mass if mass else w for w in weights]


def _lay_out(bins: list[list[int]], chosen: list[Example], batches: list[dict[str, Any]],
             cpu: list[dict[str, torch.Tensor]], rows_per: int, seq_len: int, pad_id: int,
             device: torch.device, scaled: list[float] | None) -> dict[str, Any]:
    """One output micro-batch from `bins` (rows of indices into `chosen`)."""
    order = [(r, k) for r, members in enumerate(bins) for k in members]
    slices = []
    for _, k in order:
        b, s = chosen[k]
        rec = batches[b]["segments"][s]
        slices.append((b, rec["row"], slice(rec["offset"], rec["offset"] + rec["end"] -
                                            rec["start"])))
    pieces = {key: [cpu[b][key][row, cols] for b, row, cols in slices]
              for key in ("input_ids", "labels", "position_ids")}
    grid, offsets = layout_rows(seq_len, rows_per, np.array([r for r, _ in order], np.int64),
                                np.array([len(p) for p in pieces["input_ids"]], np.int64),
                                torch.cat(pieces["input_ids"]).numpy(),
                                np.arange(len(order), dtype=np.int64), pad_id=pad_id)
    out: dict[str, Any] = {key: torch.from_numpy(grid[key]) for key in
                           ("input_ids", "labels", "position_ids", "cu_seqlens")}
    out["segment_ids"] = torch.from_numpy(grid["doc_ids"])
    if scaled is not None:
        out["loss_weights"] = torch.zeros(rows_per, seq_len, dtype=torch.float32)
    segments = []
    for i, ((row, k), off) in enumerate(zip(order, offsets.tolist(), strict=True)):
        span = slice(off, off + len(pieces["input_ids"][i]))
        out["labels"][row, span] = pieces["labels"][i]
        out["position_ids"][row, span] = pieces["position_ids"][i]
        b, s = chosen[k]
        segments.append({**batches[b]["segments"][s], "row": row, "offset": off})
        if scaled is not None:
            out["loss_weights"][row, span] = scaled[k]
            segments[-1]["weight"] = scaled[k]
    out = {key: t.to(device) for key, t in out.items()}
    return out | {"max_seqlen": grid["max_seqlen"], "segments": segments,
                  "num_tokens": int(sum(len(p) for p in pieces["input_ids"]))}


def _examples(batches: list[dict[str, Any]]) -> list[Example]:
    missing = [i for i, b in enumerate(batches) if "segments" not in b]
    if missing:
        raise InputError(f"CoLM needs `segments` (GristmillStream's) in every batch to find "
                         f"the documents and their domains; batches {missing} have none")
    return [(b, s) for b, batch in enumerate(batches) for s in range(len(batch["segments"]))]


def _target(model: nn.Module) -> torch.Tensor:
    try:
        return model.blocks[-1].mlp[2].weight
    except (AttributeError, IndexError, TypeError) as exc:
        raise InputError(f"CoLM reads blocks[-1].mlp[2] (a ProxyLM's last MLP output "
                         f"projection); {type(model).__name__} has none") from exc


def _infer_pad(batches: list[dict[str, Any]]) -> int:
    for batch in batches:
        pad = batch["input_ids"][batch["segment_ids"] < 0]
        if pad.numel():
            return int(pad[0])
    return 0


def _check_options(keep_fraction: float, group_size: int,
                   small_sources: Collection[str] | None, small_share: float,
                   feature_dim: int, similarity: str) -> None:
    if not isinstance(keep_fraction, (int, float)) or not 0 < keep_fraction <= 1:
        raise ConfigError(f"CoLM `keep_fraction` must be in (0, 1], got {keep_fraction!r}")
    for name, value in (("group_size", group_size), ("feature_dim", feature_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"CoLM `{name}` must be an integer >= 1, got {value!r}")
    if isinstance(small_sources, str):
        raise ConfigError(f"CoLM `small_sources` must be a collection of domain names, got "
                          f"the string {small_sources!r}; wrap it: [{small_sources!r}]")
    if not isinstance(small_share, (int, float)) or not 0 <= small_share < 1:
        raise ConfigError(f"CoLM `small_share` must be in [0, 1), got {small_share!r}")
    if similarity not in SIMILARITIES:
        raise ConfigError(f"CoLM `similarity` must be one of {list(SIMILARITIES)}, got "
                          f"{similarity!r}")
