"""`gristmill ablate`: compare selection methods by training a proxy model on each selection.

`run_ablation(AblationConfig(...))` holds out a fixed evaluation split per domain before any
selection, tokenizes the corpus once (training a byte-level BPE on the training pool when no
tokenizer is given), then trains a fresh `ProxyLM` for the same token budget on every cell
(selector x budget x seed, plus the extra comparisons) and writes, under `out`:

- `results.parquet`: one row per cell: selector (str), budget (float), seed (int), variant,
  tokens, steps, wall_s, eval_loss, eval_loss_<domain>, and what the selection kept;
- `curves.parquet`: train and held-out loss against tokens, per cell;
- `results.md`: mean +- std over seeds per (selector, budget), and the extra comparisons;
- `ablation.png`: held-out loss vs training tokens per selector, and final loss vs budget.

Finished cells live in `cells/<key>/` (result.json + curves.parquet) and are skipped when the
ablation is run again with the same setup (resume); a different setup in the same `out` is
refused. Every input is checked before anything is written, and the four result files are
each published by an atomic rename.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gristmill.errors import ConfigError, InputError
from gristmill.packing.tokenize import load_tokenizer_spec, tokenize_store, train_tokenizer
from gristmill.samplers import GristmillStream
from gristmill.selectors import load_pool
from gristmill.storage.atomic import atomic_directory
from gristmill.storage.schema import file_sha256, fingerprint, now_iso, write_json
from gristmill.train.cells import (
    ABLATION_SELECTORS,
    NEEDS_TARGET,
    Cell,
    CellOutcome,
    Settings,
    TokenIndex,
    Workspace,
    budget_rows,
    holdout_split,
    needs_clusters,
    run_cell,
)
from gristmill.train.model import ProxyConfig
from gristmill.train.report import write_reports

log = logging.getLogger(__name__)

_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9}


def parse_tokens(spec: str | int) -> int:
    """'5M' -> 5_000_000: an integer with an optional k/M/B suffix (case-insensitive)."""
    if isinstance(spec, bool):
        raise ConfigError(f"--tokens must be an integer with an optional k/M/B suffix, got "
                          f"{spec!r}")
    if isinstance(spec, int):
        value = spec
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMbB]?)\s*", str(spec))
        if match is None:
            raise ConfigError(f"--tokens must be an integer with an optional k/M/B suffix "
                              f"(e.g. 500k, 5M), got {spec!r}")
        number, suffix = match.groups()
        value = float(number) * _SUFFIX[suffix.lower()]
        if value != int(value):
            raise ConfigError(f"--tokens {spec!r} is not a whole number of tokens")
        value = int(value)
    if value < 1:
        raise ConfigError(f"--tokens must be >= 1, got {spec!r}")
    return int(value)


def parse_list(spec: str | Sequence[Any], cast: Callable[[Any], Any], name: str) -> list[Any]:
    """'0.1,0.3' or [0.1, 0.3] -> [0.1, 0.3] with `cast`; errors name the flag."""
    items = [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) \
        else list(spec)
    if not items:
        raise ConfigError(f"--{name} is empty")
    try:
        return [cast(item) for item in items]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--{name}: cannot read {spec!r} ({exc})") from None


@dataclass
class AblationConfig:
    """Everything an ablation run needs; YAML keys of `--config` are these field names.

    The model defaults to `ProxyConfig.cpu` (or `.gpu` on CUDA with model="auto"); `model_overrides`
    changes its shape (e.g. {"d_model": 64}). Extra comparisons: `upsample` names a domain whose
    share is multiplied by `upsample_factor` over the last `upsample_fraction` of the tokens
    (ALGORITHMS.md 6), against the constant mix; `adaptive_batch` adds a norm-test adaptive batch
    run against the fixed batch, compared on tokens and optimizer steps to `target_loss`.
    """

    corpus: str
    embeddings: str
    out: str
    clusters: str | None = None
    selectors: list[str] = field(default_factory=lambda: ["random"])
    budgets: list[float] = field(default_factory=lambda: [0.1, 0.3, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    tokens: int = 5_000_000
    tokenizer: str | None = None
    vocab_size: int = 8192
    seq_len: int = 512
    micro_batch_rows: int = 8
    model: str = "auto"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    lr: float = 2e-3
    warmup: float = 0.05
    schedule: str = "cosine"
    eval_points: int = 10
    eval_fraction: float = 0.1
    eval_max_docs: int = 200
    eval_min_docs: int = 5
    device: str = "auto"
    cpu_threads: int | None = None
    kmq_rounds: int = 3
    colm_group: int | None = None
    selector_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    upsample: str | None = None
    upsample_factor: float = 3.0
    upsample_fraction: float = 0.15
    adaptive_batch: bool = False
    max_batch_factor: int = 8
    norm_test_eta: float = 0.1
    target_loss: float | None = None
    keep_work: bool = False

    def __post_init__(self) -> None:
        self.selectors = parse_list(self.selectors, str, "selectors")
        self.budgets = parse_list(self.budgets, float, "budgets")
        self.seeds = parse_list(self.seeds, int, "seeds")
        self.tokens = parse_tokens(self.tokens)
        unknown = [s for s in self.selectors if s not in ABLATION_SELECTORS]
        if unknown:
            why = (f"; {', '.join(NEEDS_TARGET)} need a target set, which an ablation does not "
                   f"take" if set(unknown) & set(NEEDS_TARGET) else "")
            raise ConfigError(f"unknown ablation selector(s) {unknown}; choose from "
                              f"{', '.join(ABLATION_SELECTORS)}{why}")
        if len(set(self.selectors)) != len(self.selectors):
            raise ConfigError(f"--selectors lists a selector twice: {self.selectors}")
        bad = [b for b in self.budgets if not 0 < b <= 1]
        if bad:
            raise ConfigError(f"budgets {bad} are outside (0, 1]: a budget is the fraction of "
                              f"the training pool a selector keeps (1.0 = all of it)")
        if len(set(self.budgets)) != len(self.budgets) or len(set(self.seeds)) != \
                len(self.seeds):
            raise ConfigError("--budgets and --seeds must not repeat a value")
        batch = self.seq_len * self.micro_batch_rows
        if self.tokens < batch:
            raise ConfigError(f"--tokens {self.tokens:,} is smaller than one batch "
                              f"(seq_len {self.seq_len} x micro_batch_rows "
                              f"{self.micro_batch_rows} = {batch:,} tokens)")
        for name in ("seq_len", "micro_batch_rows", "eval_points", "eval_max_docs",
                     "eval_min_docs", "kmq_rounds", "vocab_size", "max_batch_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"`{name}` must be an integer >= 1, got {value!r}")
        if not 0 < self.eval_fraction < 1:
            raise ConfigError(f"`eval_fraction` must be in (0, 1), got {self.eval_fraction}")
        if self.model not in ("auto", "cpu", "gpu"):
            raise ConfigError(f"`model` must be auto, cpu or gpu, got {self.model!r}")
        if self.upsample_factor <= 0 or not 0 < self.upsample_fraction < 1:
            raise ConfigError("`upsample_factor` must be > 0 and `upsample_fraction` in (0, 1)")
        if self.colm_group is not None and self.colm_group < 1:
            raise ConfigError(f"`colm_group` must be >= 1, got {self.colm_group}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], **overrides: Any) -> AblationConfig:
        """From a YAML mapping (keys: field names, '-' or '_'); `overrides` win when not None."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {str(k).replace("-", "_"): v for k, v in data.items()}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown ablation config key(s) {unknown}; known: "
                              f"{sorted(names)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        missing = [k for k in ("corpus", "embeddings", "out") if k not in values]
        if missing:
            raise ConfigError(f"the ablation needs {missing} (flags --corpus, --embeddings, "
                              f"--out or config keys)")
        return cls(**values)

    def cells(self) -> list[Cell]:
        """The grid (random at budget 1.0 always included), then the extra comparisons."""
        grid = [Cell(s, b, seed) for s in self.selectors for b in self.budgets
                for seed in self.seeds]
        if not any(c.selector == "random" and c.budget == 1.0 for c in grid):
            grid = [Cell("random", 1.0, seed) for seed in self.seeds] + grid
        if self.upsample is not None:
            grid += [Cell("random", 1.0, seed, "upsample") for seed in self.seeds]
        if self.adaptive_batch:
            grid += [Cell("random", 1.0, seed, "adaptive") for seed in self.seeds]
        return grid


def load_ablation_config(path: str | Path, **overrides: Any) -> AblationConfig:
    """Read an ablation YAML file; flags given on the command line override its keys."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"ablation config {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: an ablation config is a mapping of keys to values")
    return AblationConfig.from_mapping(data, **overrides)


@dataclass
class AblationResult:
    """Where the outputs went and what ran."""

    out: Path
    results: pa.Table
    ran: list[str]
    skipped: list[str]
    seconds: float
    files: dict[str, Path]


def run_ablation(config: AblationConfig, *, progress: bool = True,
                 overwrite: bool = False) -> AblationResult:
    """Run (or resume) the ablation `config` describes; see the module docstring."""
    started = time.perf_counter()
    out = Path(config.out)
    pool = load_pool(config.corpus, config.embeddings, clusters=config.clusters)
    _check_selectors(config, pool.labels is not None)
    names = list(pool.domain_names)
    assert pool.domains is not None
    eval_pos = holdout_split(pool.domains, names, fraction=config.eval_fraction,
                             max_docs=config.eval_max_docs, min_docs=config.eval_min_docs)
    train_pos = np.setdiff1d(np.arange(pool.size), eval_pos)
    _check_budgets(config, len(train_pos))
    if config.upsample is not None and config.upsample not in names:
        raise ConfigError(f"--upsample {config.upsample!r} is not a domain of the corpus "
                          f"({', '.join(names)})")
    tokenizer_spec = config.tokenizer
    tokenizer_fp = None
    if tokenizer_spec is not None:  # refuse a bad tokenizer before writing anything
        tokenizer_fp = load_tokenizer_spec(tokenizer_spec)[1]["fingerprint"]
    setup = _setup(config, pool, eval_pos, tokenizer_fp)
    _claim(out, setup, overwrite)
    work = out / "_work"
    if tokenizer_spec is None:
        tokenizer_spec = str(train_tokenizer(config.corpus, out / "tokenizer",
                                             vocab_size=config.vocab_size,
                                             rows=pool.rows[train_pos], reuse=True))
    tokenized = tokenize_store(config.corpus, work / "tokens", tokenizer=tokenizer_spec,
                               reuse=True).store
    index = TokenIndex(tokenized, int(pool.corpus.num_rows) if pool.corpus else pool.size)
    clusters_by_row = None
    if pool.labels is not None:
        clusters_by_row = np.full(index.domain_of.shape, -1, dtype=np.int64)
        clusters_by_row[pool.rows] = pool.labels
    eval_store = index.write(work / "eval", pool.rows[eval_pos], clusters=clusters_by_row,
                             selector="eval")
    eval_batches = list(GristmillStream(eval_store, seq_len=config.seq_len,
                                        micro_batch_rows=config.micro_batch_rows,
                                        num_epochs=1, seed=0))
    ws = Workspace(pool, train_pos, eval_pos, index, eval_batches, work, clusters_by_row)
    settings = _settings(config, tokenized.vocab_size)
    cells = config.cells()
    ran, skipped, outcomes = [], [], []
    with _bar(progress, len(cells)) as advance:
        for cell in cells:
            done = _finished(out, cell, setup["fingerprint"])
            if done is not None:
                skipped.append(cell.key)
                outcomes.append(done)
            else:
                log.info("ablation cell %s", cell.key)
                outcome = run_cell(cell, ws, settings)
                _save_cell(out, cell, outcome, setup["fingerprint"])
                shutil.rmtree(work / "cells" / cell.key, ignore_errors=True)
                ran.append(cell.key)
                outcomes.append(outcome)
                log.info("cell %s: eval loss %.4f in %.1f s", cell.key,
                         outcome.row["eval_loss"], outcome.row["cell_s"])
            advance(cell.key)
    files = write_reports(out, outcomes, config, names, setup)
    if not config.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    table = pq.read_table(files["results"])
    return AblationResult(out, table, ran, skipped, time.perf_counter() - started, files)


def _check_selectors(config: AblationConfig, has_clusters: bool) -> None:
    if has_clusters:
        return
    need = [s for s in config.selectors if needs_clusters(s)]
    if need:
        raise ConfigError(f"{', '.join(need)} need clusters: pass --clusters CL (write them "
                          f"with: gristmill cluster {config.embeddings} --k auto --out CL)")


def _check_budgets(config: AblationConfig, pool_docs: int) -> None:
    for b in config.budgets:
        if round(b * pool_docs) < 1:
            raise ConfigError(f"budget {b:g} keeps no document of the {pool_docs}-document "
                              "training pool; raise it")
    if "kmq" in config.selectors:
        low = min(config.budgets)
        if budget_rows(low, pool_docs) < config.kmq_rounds:
            raise ConfigError(f"kmq at budget {low:g} keeps {budget_rows(low, pool_docs)} "
                              f"documents, fewer than its {config.kmq_rounds} rounds; raise "
                              f"the budget or lower kmq_rounds")


def _model_config(config: AblationConfig, vocab_size: int) -> ProxyConfig:
    import torch

    kind = config.model
    if kind == "auto":
        kind = "gpu" if torch.cuda.is_available() and config.device != "cpu" else "cpu"
    overrides = {"max_seq_len": max(config.seq_len, 2048), **config.model_overrides}
    maker = ProxyConfig.gpu if kind == "gpu" else ProxyConfig.cpu
    try:
        return maker(vocab_size, **overrides)
    except TypeError as exc:
        raise ConfigError(f"model_overrides: {exc}") from None


def _settings(config: AblationConfig, vocab_size: int) -> Settings:
    return Settings(tokens=config.tokens, seq_len=config.seq_len,
                    micro_batch_rows=config.micro_batch_rows,
                    model=_model_config(config, vocab_size), lr=config.lr,
                    warmup=config.warmup, schedule=config.schedule,
                    eval_points=config.eval_points, device=config.device,
                    cpu_threads=config.cpu_threads, rounds=config.kmq_rounds,
                    colm_group=config.colm_group, selector_params=config.selector_params,
                    upsample_domain=config.upsample, upsample_factor=config.upsample_factor,
                    upsample_fraction=config.upsample_fraction,
                    max_batch_factor=config.max_batch_factor,
                    norm_test_eta=config.norm_test_eta)


def _manifest_sha(path: str | None) -> str | None:
    if path is None:
        return None
    return file_sha256(Path(path) / "manifest.json")[:16]


def _setup(config: AblationConfig, pool: Any, eval_pos: np.ndarray,
           tokenizer: str | None) -> dict[str, Any]:
    """What a cell's result depends on besides its own (selector, budget, seed, variant)."""
    fields = {
        "corpus": _manifest_sha(config.corpus), "embeddings": _manifest_sha(config.embeddings),
        "clusters": _manifest_sha(config.clusters), "tokenizer": tokenizer,
        "vocab_size": None if tokenizer else config.vocab_size,
        "eval_rows": fingerprint([str(r) for r in pool.rows[eval_pos].tolist()]),
        **{k: getattr(config, k) for k in (
            "tokens", "seq_len", "micro_batch_rows", "model", "model_overrides", "lr",
            "warmup", "schedule", "eval_points", "kmq_rounds", "colm_group",
            "selector_params", "upsample", "upsample_factor", "upsample_fraction",
            "max_batch_factor", "norm_test_eta")},
    }
    fields = json.loads(json.dumps(fields, sort_keys=True, default=str))
    return {"fields": fields, "fingerprint": fingerprint([json.dumps(fields, sort_keys=True)])}


def _claim(out: Path, setup: dict[str, Any], overwrite: bool) -> None:
    """Create `out` (or check it holds an ablation of the same setup)."""
    record = out / "ablation.json"
    if out.exists() and overwrite:
        shutil.rmtree(out)
    if record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("fingerprint") != setup["fingerprint"]:
            before = saved.get("fields", {})
            differ = sorted(k for k in set(before) | set(setup["fields"])
                            if before.get(k) != setup["fields"].get(k))
            raise ConfigError(f"{out} holds an ablation with another setup (differs in: "
                              f"{', '.join(differ)}); use a new --out, or --overwrite to "
                              f"start over")
        return
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not an ablation directory; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".ablation.json.tmp"
    write_json(tmp, {**setup, "created": now_iso()})
    os.replace(tmp, record)


def _finished(out: Path, cell: Cell, setup_fp: str) -> CellOutcome | None:
    path = out / "cells" / cell.key
    try:
        saved = json.loads((path / "result.json").read_text())
        curves = pq.read_table(path / "curves.parquet").to_pylist()
    except (OSError, ValueError, pa.ArrowException):
        return None
    if saved.get("setup") != setup_fp:
        return None
    return CellOutcome(saved["row"], curves)


def _save_cell(out: Path, cell: Cell, outcome: CellOutcome, setup_fp: str) -> None:
    with atomic_directory(out / "cells" / cell.key, overwrite=True) as tmp:
        pq.write_table(pa.Table.from_pylist(outcome.curves), tmp / "curves.parquet")
        write_json(tmp / "result.json", {"setup": setup_fp, "cell": dataclasses.asdict(cell),
                                         "row": outcome.row, "finished": now_iso()})


class _bar:
    """A rich progress bar over cells (or nothing)."""

    def __init__(self, show: bool, total: int) -> None:
        self.show, self.total = show, total

    def __enter__(self) -> Callable[[str], None]:
        if not self.show:
            return lambda key: None
        from rich.progress import Progress

        self.progress = Progress()
        self.progress.__enter__()
        task = self.progress.add_task("ablation cells", total=self.total)
        return lambda key: self.progress.update(task, advance=1, description=f"done {key}")

    def __exit__(self, *exc: object) -> None:
        if self.show:
            self.progress.__exit__(*exc)  # type: ignore[arg-type]


#: `gristmill ablate --demo`: sized to finish in <= 15 minutes on 2 CPU cores (issue #7).
DEMO_ABLATION: dict[str, Any] = {
    "selectors": ["random", "semdedup", "dbp", "kmq"], "budgets": [0.3, 1.0], "seeds": [0, 1],
    "tokens": 250_000, "vocab_size": 2048, "seq_len": 256, "micro_batch_rows": 4,
    "model": "cpu", "model_overrides": {"d_model": 64, "n_layers": 2, "n_heads": 2,
                                        "d_ff": 256},
    "lr": 5e-3, "eval_points": 5, "cpu_threads": 1,
}


def demo_ablation_config(root: str | Path = "out/demo", **overrides: Any) -> AblationConfig:
    """The demo ablation on `gristmill demo`'s outputs under `root` (run first if missing)."""
    root = Path(root)
    stores = {"corpus": root / "corpus", "embeddings": root / "embeddings",
              "clusters": root / "clusters"}
    if not all((p / "manifest.json").is_file() for p in stores.values()):
        from gristmill.demo import run_demo

        log.warning("%s lacks the demo's corpus, embeddings or clusters: running gristmill "
                    "demo first", root)
        run_demo(root, progress=False)
    data = {**DEMO_ABLATION, **{k: str(v) for k, v in stores.items()},
            "out": str(root / "ablation")}
    return AblationConfig.from_mapping(data, **overrides)
