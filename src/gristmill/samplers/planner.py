"""The global row plan: which document segments fill which packed row, deterministically.

Every consumer (rank x DataLoader worker) runs the same planner from (seed, epoch) and keeps
only its own batches, so the plan is global and sharding cannot lose, repeat or unbalance
anything. The planner needs only document lengths; tokens are read for a consumer's own rows.

Per epoch:

1. **Draw.** A smooth weighted round-robin over sources, by tokens: each source holds a credit;
   the source with the largest credit gives its next item, then every active source gains
   weight x the item's length and the chosen one pays the length. Realised token shares stay
   within about one document of the weights at every point (ALGORITHMS.md 6.3), and with a
   schedule the weights follow the tokens consumed in the epoch.
   - natural mode: every source delivers each item of its source-epoch once; an epoch ends when
     all are delivered. RS2 mode: each source delivers the next floor(r * n) items of its
     permutation stream, so successive epochs see fresh subsets without replacement.
   - tokens mode: an epoch ends at `epoch_tokens`; a source that runs out starts a new
     source-epoch (a fresh permutation), counted as a repetition.
2. **Buffer.** Drawn items are cut into segments of at most seq_len tokens and buffered.
3. **Pack.** When the buffer holds `buffer_docs` segments, the packer (bfd by default) packs it;
   rows filled to within 0.5 % of seq_len go out in a seeded shuffled order, the rest go back
   to the buffer to meet new documents (at most `max_carry` times). At the end of an epoch the
   buffer is flushed. This bounded-buffer streaming BFD reaches the efficiency of a global BFD
   on corpora far larger than memory.

The state (`state_dict`) is plain ints, floats and lists, so torch.save with weights_only works.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from gristmill.errors import ConfigError, CorruptStoreError
from gristmill.packing import pack
from gristmill.samplers.mixing import Mixture
from gristmill.samplers.sources import Source

ROW_COLUMNS = ("source", "doc", "copy", "start", "end")  # one packed segment


class Planner:
    """Deterministic producer of packed rows (each an (k, 5) int64 array of ROW_COLUMNS)."""

    def __init__(self, sources: list[Source], mixture: Mixture, *, seq_len: int, packer: str,
                 buffer_docs: int, seed: int, rs2_fraction: float | None = None,
                 max_carry: int = 4, fill_tolerance: float = 0.005) -> None:
        self.sources = sources
        self.mixture = mixture
        self.seq_len = seq_len
        self.packer = packer
        self.buffer_docs = buffer_docs
        self.seed = seed
        self.rs2_fraction = rs2_fraction
        self.max_carry = max_carry
        self.min_fill = seq_len - max(0, math.floor(fill_tolerance * seq_len))
        self.base_weights = [mixture.proportions.get(s.name, 0.0) for s in sources]
        self.reset(0)

    # -- state ---------------------------------------------------------------------------

    def reset(self, epoch: int) -> None:
        """Fresh state at the start of epoch 0, then fast-forward (draws only) to `epoch`."""
        n = len(self.sources)
        self.epoch = 0
        self.tokens = 0
        self.src_epoch = [0] * n
        self.pos = [0] * n
        self.consumed = [0] * n
        self.round = 0
        self.buffer: list[tuple[int, int, int, int, int, int]] = []
        self.ready: deque[np.ndarray] = deque()
        if self.mixture.mode == "natural" and self.rs2_fraction is None and epoch > 0:
            for e in range(epoch):  # closed form: source-epoch == epoch
                for s, source in enumerate(self.sources):
                    docs, _ = source.items(self.seed, e)
                    used = int(source.lengths[docs].sum())
                    self.consumed[s] += used
                    self.tokens += used
            self.epoch = epoch
        self.start_epoch(self.epoch)
        while self.epoch < epoch:
            while self._draw(buffer=False):
                pass
            self.start_epoch(self.epoch + 1)

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        n = len(self.sources)
        self._mix_cache: tuple[Any, list[int], list[float]] | None = None
        self.epoch_tokens = 0
        self.credits = [0.0] * n
        self.taken = [0] * n
        self.drawing = True
        self.round = 0
        mode = self.mixture.mode
        if mode == "natural" and self.rs2_fraction is None:
            self.quota = []
            weights = []
            for s, source in enumerate(self.sources):
                self.src_epoch[s], self.pos[s] = epoch, 0
                docs, _ = source.items(self.seed, epoch)
                self.quota.append(int(docs.size))
                weights.append(float(source.lengths[docs].sum()))
            total = sum(weights)
            self.epoch_weights = [w / total if total else 0.0 for w in weights]
        elif mode == "natural":
            self.quota = [int(math.floor(self.rs2_fraction * s.num_docs)) if s.num_docs else 0
                          for s in self.sources]
            total = sum(q * s.expected_tokens / max(1, s.num_docs)
                        for q, s in zip(self.quota, self.sources, strict=True))
            self.epoch_weights = [q * s.expected_tokens / max(1, s.num_docs) / total if total
                                  else 0.0 for q, s in zip(self.quota, self.sources, strict=True)]
        else:
            self.quota = []
            self.epoch_weights = list(self.base_weights)

    def state_dict(self) -> dict[str, Any]:
        ready = list(self.ready)
        return {
            "epoch": self.epoch, "tokens": self.tokens, "epoch_tokens": self.epoch_tokens,
            "src_epoch": list(self.src_epoch), "pos": list(self.pos),
            "consumed": list(self.consumed), "taken": list(self.taken),
            "quota": list(self.quota), "epoch_weights": list(self.epoch_weights),
            "credits": list(self.credits), "drawing": self.drawing, "round": self.round,
            "buffer": [list(b) for b in self.buffer],
            "ready_rows": [int(r.shape[0]) for r in ready],
            "ready": np.concatenate(ready).tolist() if ready else [],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        n = len(self.sources)
        for key in ("src_epoch", "pos", "consumed", "credits"):
            if len(state[key]) != n:
                raise ConfigError(f"stream state has {len(state[key])} sources in `{key}`, this "
                                  f"stream has {n}")
        self.epoch = int(state["epoch"])
        self.tokens = int(state["tokens"])
        self.epoch_tokens = int(state["epoch_tokens"])
        self.src_epoch = [int(x) for x in state["src_epoch"]]
        self.pos = [int(x) for x in state["pos"]]
        self.consumed = [int(x) for x in state["consumed"]]
        self.taken = [int(x) for x in state["taken"]]
        self.quota = [int(x) for x in state["quota"]]
        self.epoch_weights = [float(x) for x in state["epoch_weights"]]
        self.credits = [float(x) for x in state["credits"]]
        self._mix_cache = None
        self.drawing = bool(state["drawing"])
        self.round = int(state["round"])
        self.buffer = [tuple(int(v) for v in b) for b in state["buffer"]]  # type: ignore[misc]
        flat = np.asarray(state["ready"], dtype=np.int64).reshape(-1, len(ROW_COLUMNS))
        counts = np.asarray(state["ready_rows"], dtype=np.int64)
        if int(counts.sum()) != flat.shape[0]:
            raise ConfigError("stream state is damaged: ready rows do not add up")
        self.ready = deque(np.split(flat, np.cumsum(counts)[:-1]) if counts.size else [])

    # -- drawing -------------------------------------------------------------------------

    def _weights(self) -> list[float]:
        schedule = self.mixture.schedule
        if schedule is None:
            return self.epoch_weights
        at = schedule.weights_at(self.epoch_tokens)
        return [at.get(s.name, 0.0) for s in self.sources]

    def _mix(self) -> tuple[list[int], list[float]]:
        """(active sources, their token shares); cached while neither can change."""
        key: Any = None
        schedule = self.mixture.schedule
        if schedule is not None:
            phase = next((i for i, p in enumerate(schedule.phases)
                          if self.epoch_tokens < p.end), len(schedule.phases) - 1)
            if schedule.phases[phase].end_weights is not None:
                key = None  # a linear blend: weights move with every token
            else:
                key = ("phase", phase)
        else:
            key = "fixed"
        if key is not None and self._mix_cache is not None and self._mix_cache[0] == key:
            return self._mix_cache[1], self._mix_cache[2]
        weights = self._weights()
        n = len(self.sources)
        if self.quota:
            active = [s for s in range(n) if self.taken[s] < self.quota[s]]
        else:
            active = [s for s in range(n) if weights[s] > 0]
        norm = sum(weights[a] for a in active)
        shares = [weights[a] / norm if norm > 0 else 0.0 for a in active]
        self._mix_cache = (key, active, shares) if key is not None else None
        return active, shares

    def _draw(self, *, buffer: bool = True) -> bool:
        """Draw the next item into the buffer; False when the epoch has no more draws."""
        if not self.drawing:
            return False
        if not self.quota and self.epoch_tokens >= self.mixture.epoch_tokens:
            self.drawing = False
            return False
        active, shares = self._mix()
        if not active:
            self.drawing = False
            return False
        credits = self.credits
        chosen = active[0]
        for a in active:
            if credits[a] > credits[chosen]:
                chosen = a
        doc, copy = self._next_item(chosen)
        length = int(self.sources[chosen].lengths[doc])
        for a, share in zip(active, shares, strict=True):
            credits[a] += share * length
        credits[chosen] -= length
        self.consumed[chosen] += length
        self.tokens += length
        self.epoch_tokens += length
        self.taken[chosen] += 1
        if self.quota and self.taken[chosen] == self.quota[chosen]:
            self._mix_cache = None  # the source is done for this epoch
        if buffer:
            step = self.seq_len
            for start in range(0, length, step):
                self.buffer.append((chosen, doc, copy, start, min(start + step, length), 0))
        return True

    def _next_item(self, s: int) -> tuple[int, int]:
        source = self.sources[s]
        for _ in range(1000):
            docs, copies = source.items(self.seed, self.src_epoch[s])
            if self.pos[s] < docs.size:
                i = self.pos[s]
                self.pos[s] += 1
                return int(docs[i]), int(copies[i])
            self.src_epoch[s] += 1
            self.pos[s] = 0
        raise CorruptStoreError(f"domain {source.name!r} yields no documents (1000 source-epochs "
                                f"in a row were empty); check its selection weights")

    # -- packing -------------------------------------------------------------------------

    def next_row(self) -> np.ndarray | None:
        """The next packed row of this epoch, or None once the epoch's rows are all out."""
        while not self.ready:
            while self.drawing and len(self.buffer) < self.buffer_docs:
                self._draw()
            if self.drawing:
                self._pack_round(final=False)
            elif self.buffer:
                self._pack_round(final=True)
            else:
                return None
        return self.ready.popleft()

    def _pack_round(self, *, final: bool) -> None:
        items = np.asarray(self.buffer, dtype=np.int64).reshape(-1, 6)
        plan = pack(self.packer, items[:, 4] - items[:, 3], self.seq_len)
        segs = plan.segments
        owner = items[segs.doc]
        table = np.stack([owner[:, 0], owner[:, 1], owner[:, 2], owner[:, 3] + segs.start,
                          owner[:, 3] + segs.end], axis=1)[plan.order]
        age = owner[:, 5][plan.order]
        counts = np.diff(plan.row_offsets)
        fills = plan.row_lengths()
        row_of = np.repeat(np.arange(plan.num_rows), counts)
        oldest = np.zeros(plan.num_rows, dtype=np.int64)
        np.maximum.at(oldest, row_of, age)
        emit = np.ones(plan.num_rows, dtype=bool) if final else (
            (fills >= self.min_fill) | (oldest >= self.max_carry))
        rows = np.split(table, plan.row_offsets[1:-1])
        out = np.flatnonzero(emit)
        rng = np.random.default_rng([self.seed, self.epoch, self.round, 0x9ACC])
        self.ready.extend(rows[i] for i in out[rng.permutation(out.size)])
        carried = np.flatnonzero(~emit)
        self.buffer = [(*map(int, seg), int(a) + 1)  # type: ignore[misc]
                       for r in carried for seg, a in zip(rows[r], age[row_of == r],
                                                          strict=True)]
        self.round += 1

    # -- reporting -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "tokens": self.tokens,
            "epoch_tokens": self.epoch_tokens,
            "domains": {s.name: {"tokens": self.consumed[i], "source_epoch": self.src_epoch[i],
                                 "position": self.pos[i]}
                        for i, s in enumerate(self.sources)},
        }
