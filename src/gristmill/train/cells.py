"""One ablation cell: choose the training rows, train the proxy on them, evaluate it.

A cell is (selector, budget, seed, variant). Every cell of an ablation shares a `Workspace`:
the pool (corpus rows with their embeddings, clusters and domains), the fixed held-out split
(taken per domain before any selection), the training pool (the rest), the whole corpus
tokenized once, and the held-out batches. A cell writes the token store of its rows (a fast
gather from the tokenized corpus, no re-tokenization) and trains a fresh proxy on it for the
ablation's token budget, so every cell sees the same number of training tokens.

What a budget means per selector (issue #7):
- offline selectors (`random`, `dbp`, `kcenter`, `facility-location`, `ssp`): that
  fraction of the training pool's documents;
- `semdedup` (a filter): eps `SEMDEDUP_EPS` = 0.05 (or the configured one), then a uniform
  sample down to the budget when the filter kept more;
- `kmq`: iterative refinement (`IterativeRefiner`) in `rounds` rounds of budget / rounds
  documents; after each round the model's held-in loss per cluster on that round's rows
  reweights the clusters, and training continues on the cumulative selection for the next
  share of the token budget;
- `colm`: the fraction of each large batch its mini-batch coreset keeps (`ColmFilter`), over
  the whole training pool;
- `hard-batch`: keeps the highest-loss micro-batch of every round(1 / budget) drawn.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gristmill.errors import ConfigError, InputError
from gristmill.samplers import GristmillStream, Schedule
from gristmill.samplers.controllers import make_controller
from gristmill.selectors import SELECTORS, Pool, select, selector_module
from gristmill.selectors.kmq import IterativeRefiner
from gristmill.storage.atomic import atomic_directory
from gristmill.storage.tokens import TokenStore, TokenStoreWriter
from gristmill.train.config import TrainConfig
from gristmill.train.evaluation import evaluate
from gristmill.train.filters import hard_batch
from gristmill.train.model import ProxyConfig
from gristmill.train.trainer import TrainResult, TrainState, train

log = logging.getLogger(__name__)

#: Selectors that need inputs an ablation does not have (a target set).
NEEDS_TARGET = ("rds", "dsir")
ABLATION_SELECTORS = tuple(s for s in SELECTORS if s not in NEEDS_TARGET) + ("colm",
                                                                             "hard-batch")
#: semdedup's eps in an ablation unless `selector_params.semdedup.eps` says otherwise (the
#: demo recipe's; the paper's LAION runs span 0.03-0.26).
SEMDEDUP_EPS = 0.05


@dataclass(frozen=True)
class Cell:
    """One training run of an ablation."""

    selector: str
    budget: float
    seed: int
    variant: str = "base"

    @property
    def key(self) -> str:
        tail = "" if self.variant == "base" else f"-{self.variant}"
        return f"{self.selector}-b{self.budget:g}-s{self.seed}{tail}"


def needs_clusters(selector: str) -> bool:
    """Whether `selector` reads cluster labels (kmq's refiner does, colm/hard-batch do not)."""
    if selector in ("colm", "hard-batch"):
        return False
    return bool(getattr(selector_module(selector), "NEEDS_CLUSTERS", False))


def holdout_split(domains: np.ndarray, names: list[str], *, fraction: float, max_docs: int,
                  min_docs: int, seed: int = 0) -> np.ndarray:
    """Pool positions held out for evaluation: per domain min(fraction * n, max_docs), >= min_docs.

    Raises:
        InputError: a domain is too small to hold out `min_docs` and keep `min_docs` to train.
    """
    rng = np.random.default_rng(seed)
    held = []
    for code, name in enumerate(names):
        rows = np.flatnonzero(domains == code)
        n = len(rows)
        if n == 0:
            continue
        k = max(min(int(fraction * n), max_docs), min_docs)
        if n - k < min_docs:
            raise InputError(f"domain {name!r} has {n} documents: too few to hold out {k} for "
                             f"evaluation and keep {min_docs} to train on (needs >= "
                             f"{k + min_docs}); add documents or lower eval_min_docs")
        held.append(np.sort(rng.choice(rows, size=k, replace=False)))
    return np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)


def subpool(pool: Pool, positions: np.ndarray) -> Pool:
    """The pool restricted to `positions` (sorted), sharing its stores."""
    pick = np.asarray(positions, dtype=np.int64)
    sliced = {name: getattr(pool, name)[pick] for name in ("labels", "dist", "domains")
              if getattr(pool, name) is not None}
    return dataclasses.replace(pool, rows=pool.rows[pick], source=None, **sliced)


class TokenIndex:
    """Where each corpus row's tokens lie in a tokenized corpus; writes subset stores fast."""

    def __init__(self, store: TokenStore, num_rows: int) -> None:
        self.store = store
        self.domain_of = np.full(num_rows, -1, dtype=np.int64)
        self.doc_of = np.full(num_rows, -1, dtype=np.int64)
        self.names = list(store.domains)
        for code, name in enumerate(self.names):
            rows = store.domains[name].column("row").astype(np.int64)
            self.domain_of[rows] = code
            self.doc_of[rows] = np.arange(len(rows))

    def tokens_of(self, rows: np.ndarray) -> dict[str, int]:
        """Tokens per domain of corpus `rows`."""
        out: dict[str, int] = {}
        for code, name in enumerate(self.names):
            docs = self.doc_of[rows[self.domain_of[rows] == code]]
            if len(docs):
                out[name] = int(self.store.domains[name].lengths[docs].sum())
        return out

    def write(self, out: Path, rows: np.ndarray, *, clusters: np.ndarray | None,
              selector: str) -> TokenStore:
        """A token store of corpus `rows` (their documents, in row order per domain)."""
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        missing = rows[self.domain_of[rows] < 0]
        if len(missing):
            raise InputError(f"corpus rows {missing[:5].tolist()} have no tokens (empty "
                             "after tokenization?)")
        with atomic_directory(out, overwrite=True) as tmp:
            writer = TokenStoreWriter(tmp, tokenizer=dict(self.store.tokenizer))
            for code, name in enumerate(self.names):
                mine = rows[self.domain_of[rows] == code]
                if not len(mine):
                    continue
                domain = self.store.domains[name]
                tokens, offsets, ids = domain.tokens, domain.offsets, domain.column("id")
                docs = self.doc_of[mine]
                writer.add(name, [tokens[offsets[d]:offsets[d + 1]] for d in docs],
                           ids=[str(ids[d]) for d in docs], rows=mine.tolist(),
                           clusters=None if clusters is None else clusters[mine].tolist(),
                           selectors=[selector] * len(mine))
            writer.finish(inputs={"tokens": {"path": str(self.store.path),
                                             "fingerprint": self.store.fingerprint}},
                          params={"rows": len(rows), "selector": selector},
                          eos=self.store.manifest.get("eos"))
        return TokenStore.open(out)


@dataclass
class Workspace:
    """What every cell of an ablation shares (see the module docstring)."""

    pool: Pool
    train_pos: np.ndarray
    eval_pos: np.ndarray
    index: TokenIndex
    eval_batches: list[dict[str, Any]]
    work: Path
    clusters_by_row: np.ndarray | None = None
    train_pool: Pool = field(init=False)

    def __post_init__(self) -> None:
        self.train_pool = subpool(self.pool, self.train_pos)

    @property
    def train_rows(self) -> np.ndarray:
        return self.pool.rows[self.train_pos]


@dataclass
class Settings:
    """The per-run knobs a cell reads (a view of `AblationConfig`)."""

    tokens: int
    seq_len: int
    micro_batch_rows: int
    model: ProxyConfig
    lr: float
    warmup: float
    schedule: str
    eval_points: int
    device: str
    cpu_threads: int | None
    rounds: int
    colm_group: int | None
    selector_params: dict[str, dict[str, Any]]
    upsample_domain: str | None
    upsample_factor: float
    upsample_fraction: float
    max_batch_factor: int
    norm_test_eta: float


@dataclass
class CellOutcome:
    """A finished cell: its results row and its curve points."""

    row: dict[str, Any]
    curves: list[dict[str, Any]]


def budget_rows(budget: float, pool_size: int) -> int:
    """Documents a fraction `budget` of a `pool_size` pool keeps (>= 1)."""
    return max(1, round(budget * pool_size))


def run_cell(cell: Cell, ws: Workspace, st: Settings) -> CellOutcome:
    """Select, train and evaluate one cell; the outcome's row has the results columns."""
    started = time.perf_counter()
    cell_dir = ws.work / "cells" / cell.key
    if cell.selector == "kmq":
        result, info = _run_kmq(cell, ws, st, cell_dir)
    else:
        rows, info = _choose_rows(cell, ws, st)
        store = ws.index.write(cell_dir / "tokens", rows, clusters=ws.clusters_by_row,
                               selector=cell.selector)
        result = _train(cell, st, _stream(cell, store, st, ws), ws.eval_batches,
                        batch_filter=_filter(cell, st))
    row = {"selector": cell.selector, "budget": float(cell.budget), "seed": int(cell.seed),
           "variant": cell.variant, **_summary(result), **info,
           "cell_s": time.perf_counter() - started}
    return CellOutcome(row, _curves(cell, result))


def _choose_rows(cell: Cell, ws: Workspace, st: Settings) -> tuple[np.ndarray, dict[str, Any]]:
    pool = ws.train_pool
    want = budget_rows(cell.budget, pool.size)
    params = dict(st.selector_params.get(cell.selector, {}))
    if cell.selector in ("colm", "hard-batch") or (cell.selector == "random"
                                                  and cell.budget == 1.0):
        picked = np.arange(pool.size)
    elif cell.selector == "semdedup":
        params.setdefault("eps", SEMDEDUP_EPS)
        kept = select("semdedup", pool, None, seed=cell.seed, **params).selected
        if len(kept) > want:
            rng = np.random.default_rng(cell.seed)
            kept = np.sort(rng.choice(kept, size=want, replace=False))
        elif len(kept) < want:
            log.info("semdedup kept %d rows, fewer than the budget's %d: training on all of "
                     "them", len(kept), want)
        picked = kept
    else:
        picked = select(cell.selector, pool, want, seed=cell.seed, **params).selected
    rows = pool.rows[picked]
    return rows, {"selected_docs": int(len(rows)),
                  "selected_tokens": int(sum(ws.index.tokens_of(rows).values()))}


def _stream(cell: Cell, store: TokenStore, st: Settings, ws: Workspace) -> GristmillStream:
    schedule = None
    if cell.variant == "upsample":
        domain = st.upsample_domain
        shares = ws.index.tokens_of(store_rows(store))
        if domain not in shares:
            raise InputError(f"cannot upsample {domain!r}: the cell's training rows hold no "
                             f"document of it (domains: {sorted(shares)})")
        total = sum(shares.values())
        base = {d: n / total for d, n in shares.items()}
        up = dict(base)
        up[domain] = base[domain] * st.upsample_factor
        norm = sum(up.values())
        up = {d: w / norm for d, w in up.items()}
        schedule = Schedule.upsample_at_end(base, up, st.tokens,
                                            fraction=st.upsample_fraction)
    return GristmillStream(store, seq_len=st.seq_len, micro_batch_rows=st.micro_batch_rows,
                           seed=cell.seed, schedule=schedule)


def store_rows(store: TokenStore) -> np.ndarray:
    """Corpus rows of every document of a token store."""
    return np.concatenate([d.column("row").astype(np.int64) for d in store.domains.values()])


def _filter(cell: Cell, st: Settings) -> Any:
    if cell.selector == "hard-batch":
        return hard_batch(max(1, round(1 / cell.budget)))
    if cell.selector == "colm":
        from gristmill.train.colm import ColmFilter

        group = st.colm_group or max(2, math.ceil(1 / cell.budget))
        return ColmFilter(cell.budget, group_size=group, weighted=True)
    return None


def _train_config(cell: Cell, st: Settings) -> TrainConfig:
    return TrainConfig(max_tokens=st.tokens, lr=st.lr, warmup=st.warmup,
                       schedule=st.schedule,  # type: ignore[arg-type]
                       eval_every_tokens=max(1, st.tokens // st.eval_points),
                       seed=cell.seed, device=st.device, cpu_threads=st.cpu_threads)


def _train(cell: Cell, st: Settings, stream: GristmillStream, eval_batches: list[Any], *,
           batch_filter: Any = None, resume: TrainState | None = None,
           until_tokens: int | None = None, evaluate_end: bool = True) -> TrainResult:
    controller = None
    if cell.variant == "adaptive":
        controller = make_controller("norm_test", micro_batch_rows=st.micro_batch_rows,
                                     max_batch=st.micro_batch_rows * st.max_batch_factor,
                                     eta=st.norm_test_eta)
    return train(stream, st.model, _train_config(cell, st),
                 eval_batches=eval_batches if evaluate_end else None, controller=controller,
                 batch_filter=batch_filter, resume=resume, until_tokens=until_tokens)


def _run_kmq(cell: Cell, ws: Workspace, st: Settings,
             cell_dir: Path) -> tuple[TrainResult, dict[str, Any]]:
    pool = ws.train_pool
    if pool.labels is None:
        raise ConfigError("kmq needs clusters: pass --clusters CL (gristmill cluster EMB "
                          "--k auto --out CL)")
    want = budget_rows(cell.budget, pool.size)  # >= rounds: checked by run_ablation
    params = st.selector_params.get("kmq", {})
    refiner = IterativeRefiner(pool.labels, want, rounds=st.rounds, seed=cell.seed,
                               tau=float(params.get("tau", 1.0)),
                               update=str(params.get("update", "multiplicative")),
                               num_clusters=pool.num_clusters or None)
    state: TrainState | None = None
    parts: list[TrainResult] = []
    weights: list[list[float]] = []
    for r in range(st.rounds):
        new = refiner.next_round()
        store = ws.index.write(cell_dir / "tokens", pool.rows[refiner.selected],
                               clusters=ws.clusters_by_row, selector="kmq")
        last = r == st.rounds - 1
        until = st.tokens if last else st.tokens * (r + 1) // st.rounds
        stream = GristmillStream(store, seq_len=st.seq_len,
                                 micro_batch_rows=st.micro_batch_rows, seed=cell.seed + 7919 * r)
        result = _train(cell, st, stream, ws.eval_batches, resume=state, until_tokens=until,
                        evaluate_end=last)
        parts.append(result)
        state = result.state
        if not last:
            scored = ws.index.write(cell_dir / "round", pool.rows[new],
                                    clusters=ws.clusters_by_row, selector="kmq")
            batches = list(GristmillStream(scored, seq_len=st.seq_len,
                                           micro_batch_rows=st.micro_batch_rows,
                                           num_epochs=1, seed=0))
            loss = evaluate(state.model, batches, by="cluster")
            refiner.update({int(c): v for c, v in loss.items()})
            weights.append(refiner.weights.tolist())
    final = parts[-1]
    merged = dataclasses.replace(
        final, curves=[c for p in parts for c in p.curves],
        eval_curves=[c for p in parts for c in p.eval_curves],
        tokens_read=sum(p.tokens_read for p in parts), wall_s=sum(p.wall_s for p in parts),
        micro_batches=sum(p.micro_batches for p in parts))
    rows = pool.rows[refiner.selected]
    return merged, {"selected_docs": int(len(rows)),
                    "selected_tokens": int(sum(ws.index.tokens_of(rows).values()))}


def _summary(result: TrainResult) -> dict[str, Any]:
    row = result.summary()
    row["micro_batches"] = result.micro_batches
    return row


def _curves(cell: Cell, result: TrainResult) -> list[dict[str, Any]]:
    head = {"selector": cell.selector, "budget": float(cell.budget), "seed": int(cell.seed),
            "variant": cell.variant}
    points = [{**head, "kind": "train", "tokens": c["tokens"], "step": c["step"],
               "loss": c["train_loss"], "batch_rows": c.get("batch_rows"),
               "lr_multiplier": c.get("lr_multiplier")} for c in result.curves]
    for e in result.eval_curves:
        extra = {k: v for k, v in e.items() if k.startswith("eval_loss_")}
        points.append({**head, "kind": "eval", "tokens": e["tokens"], "step": e["step"],
                       "loss": e["eval_loss"], **extra})
    return points

