"""The ablation's outputs: results.parquet, curves.parquet, results.md and ablation.png.

Each file is written to a temporary name beside it and renamed into place, so a reader never
sees half a table. The Markdown table gives mean +- std over seeds (sample std, ddof=1; a
single seed shows no std) of the held-out loss overall and per domain, with tokens, optimizer
steps and wall time; the extra comparisons (domain upsampling, adaptive batch) get their own
sections.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FIRST = ("selector", "budget", "seed", "variant", "tokens", "steps", "wall_s", "eval_loss")


def write_reports(out: Path, outcomes: Sequence[Any], config: Any, domains: list[str],
                  setup: dict[str, Any]) -> dict[str, Path]:
    """Write the four result files from the cells' outcomes; returns their paths."""
    rows = [_complete(o.row, domains) for o in outcomes]
    columns = list(FIRST) + [f"eval_loss_{d}" for d in domains]
    columns += sorted({k for r in rows for k in r} - set(columns))
    results = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows])
    curves = pa.Table.from_pylist([p for o in outcomes for p in o.curves])
    files = {"results": out / "results.parquet", "curves": out / "curves.parquet",
             "markdown": out / "results.md", "plot": out / "ablation.png"}
    _publish(files["results"], lambda p: pq.write_table(results, p))
    _publish(files["curves"], lambda p: pq.write_table(curves, p))
    text = markdown(rows, domains, config, setup, curves.to_pylist())
    _publish(files["markdown"], lambda p: Path(p).write_text(text))
    _publish(files["plot"], lambda p: plot(rows, curves.to_pylist(), p))
    return files


def _complete(row: dict[str, Any], domains: list[str]) -> dict[str, Any]:
    out = dict(row)
    for d in domains:
        out.setdefault(f"eval_loss_{d}", None)
    out["budget"], out["seed"] = float(out["budget"]), int(out["seed"])
    return out


def _publish(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _stats(values: Sequence[float | None]) -> tuple[float, float]:
    vals = np.array([v for v in values if v is not None and not math.isnan(v)], float)
    if not len(vals):
        return math.nan, math.nan
    return float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else math.nan


def _fmt(mean: float, std: float, digits: int = 4) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def groups(rows: Sequence[dict[str, Any]], variant: str = "base"
           ) -> dict[tuple[str, float], list[dict[str, Any]]]:
    """Rows of `variant` grouped by (selector, budget), in first-seen order."""
    out: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        if r["variant"] == variant:
            out.setdefault((r["selector"], r["budget"]), []).append(r)
    return out


def markdown(rows: Sequence[dict[str, Any]], domains: list[str], config: Any,
             setup: dict[str, Any], curves: Sequence[dict[str, Any]] = ()) -> str:
    """results.md: the main table, then any extra comparison."""
    lines = ["# Selection ablation", "",
             f"Proxy model trained for {config.tokens:,} tokens per cell (seq_len "
             f"{config.seq_len}, {config.micro_batch_rows} rows per micro-batch, lr "
             f"{config.lr:g}, {config.schedule}); held-out loss per label token on a fixed "
             f"split of min({config.eval_fraction:.0%}, {config.eval_max_docs}) documents per "
             f"domain (at least {config.eval_min_docs}), taken before any selection. "
             f"Mean ± std over seeds. Setup fingerprint `{setup['fingerprint']}`.", ""]
    head = ["selector", "budget", "seeds", "eval loss", *domains, "docs kept", "tokens",
            "steps", "wall s"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    table = groups(rows)
    for (selector, budget), cell_rows in sorted(table.items(), key=lambda kv: (
            kv[0][1], _stats([r["eval_loss"] for r in kv[1]])[0])):
        cols = [selector, f"{budget:g}", str(len(cell_rows)),
                _fmt(*_stats([r["eval_loss"] for r in cell_rows]))]
        cols += [_fmt(*_stats([r.get(f"eval_loss_{d}") for r in cell_rows])) for d in domains]
        cols += [f"{_stats([r.get('selected_docs') for r in cell_rows])[0]:,.0f}",
                 f"{_stats([r['tokens'] for r in cell_rows])[0]:,.0f}",
                 f"{_stats([r['steps'] for r in cell_rows])[0]:,.0f}",
                 _fmt(*_stats([r['wall_s'] for r in cell_rows]), digits=1)]
        lines.append("| " + " | ".join(cols) + " |")
    if config.upsample is not None:
        lines += ["", *_upsample_section(rows, domains, config)]
    if config.adaptive_batch:
        lines += ["", *_adaptive_section(rows, curves, config)]
    return "\n".join(lines) + "\n"


def _upsample_section(rows: Sequence[dict[str, Any]], domains: list[str],
                      config: Any) -> list[str]:
    d = config.upsample
    others = [x for x in domains if x != d]
    lines = [f"## Domain upsampling at the end of training: {d}", "",
             f"random at budget 1.0; `upsample` multiplies {d}'s share by "
             f"{config.upsample_factor:g} over the last {config.upsample_fraction:.0%} of the "
             f"tokens (ALGORITHMS.md 6), `constant` keeps the natural mix.", "",
             f"| mix | seeds | {d} loss | other domains' loss | eval loss |",
             "|---|---|---|---|---|"]
    for name, variant in (("constant", "base"), ("upsample", "upsample")):
        cell_rows = groups(rows, variant).get(("random", 1.0), [])
        if not cell_rows:
            continue
        other = [float(np.mean([r[f"eval_loss_{o}"] for o in others
                                if r.get(f"eval_loss_{o}") is not None])) if others else
                 math.nan for r in cell_rows]
        lines.append(f"| {name} | {len(cell_rows)} | "
                     f"{_fmt(*_stats([r.get(f'eval_loss_{d}') for r in cell_rows]))} | "
                     f"{_fmt(*_stats(other))} | "
                     f"{_fmt(*_stats([r['eval_loss'] for r in cell_rows]))} |")
    return lines


def reach(curve: Sequence[dict[str, Any]], target: float) -> tuple[float, float]:
    """(tokens, steps) of the first held-out evaluation at or below `target` (NaN if never)."""
    for point in sorted(curve, key=lambda p: p["tokens"]):
        if point["loss"] is not None and point["loss"] <= target:
            return float(point["tokens"]), float(point["step"])
    return math.nan, math.nan


def _adaptive_section(rows: Sequence[dict[str, Any]], curves: Sequence[dict[str, Any]],
                      config: Any) -> list[str]:
    fixed = groups(rows, "base").get(("random", 1.0), [])
    adaptive = groups(rows, "adaptive").get(("random", 1.0), [])
    finals = [r["eval_loss"] for r in fixed + adaptive if r["eval_loss"] is not None]
    target = config.target_loss if config.target_loss is not None else (
        max(finals) if finals else math.nan)
    lines = ["## Fixed vs adaptive batch size", "",
             f"random at budget 1.0; `adaptive` grows the batch by the norm test (eta "
             f"{config.norm_test_eta:g}, up to {config.max_batch_factor}x the micro-batch). "
             f"Target held-out loss {target:.4f}"
             + (" (the worse of the two runs' final losses)" if config.target_loss is None
                else "") + "; tokens and optimizer steps at the first evaluation at or below "
             "it.", "", "| batch | seeds | tokens to target | steps to target | final eval loss |"
             " total steps |", "|---|---|---|---|---|---|"]
    for name, cell_rows in (("fixed", fixed), ("adaptive", adaptive)):
        if not cell_rows:
            continue
        hits = [reach([p for p in curves if p["kind"] == "eval" and p["selector"] == "random"
                       and p["budget"] == 1.0 and p["variant"] == r["variant"]
                       and p["seed"] == r["seed"]], target) for r in cell_rows]
        lines.append(f"| {name} | {len(cell_rows)} | "
                     f"{_fmt(*_stats([h[0] for h in hits]), digits=0)} | "
                     f"{_fmt(*_stats([h[1] for h in hits]), digits=0)} | "
                     f"{_fmt(*_stats([r['eval_loss'] for r in cell_rows]))} | "
                     f"{_fmt(*_stats([r['steps'] for r in cell_rows]), digits=0)} |")
    return lines


def plot(rows: Sequence[dict[str, Any]], curves: Sequence[dict[str, Any]], path: Path) -> None:
    """ablation.png: held-out loss vs tokens per selector and budget; final loss vs budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    selectors = list(dict.fromkeys(r["selector"] for r in rows if r["variant"] == "base"))
    colours = {s: plt.cm.tab10(i % 10) for i, s in enumerate(selectors)}
    budgets = sorted({r["budget"] for r in rows if r["variant"] == "base"})
    styles = dict(zip(budgets, ["-", "--", ":", "-."] * 4, strict=False))
    table = groups(rows)
    for selector, budget in table:
        points: dict[int, list[float]] = {}
        for p in curves:
            if (p["kind"] == "eval" and p["variant"] == "base" and p["selector"] == selector
                    and p["budget"] == budget and p["loss"] is not None):
                points.setdefault(int(p["tokens"]), []).append(float(p["loss"]))
        if points:
            xs = sorted(points)
            left.plot(xs, [np.mean(points[x]) for x in xs], styles[budget],
                      color=colours[selector], label=f"{selector} {budget:g}")
    left.set_xlabel("training tokens")
    left.set_ylabel("held-out loss")
    left.set_title("held-out loss vs tokens (mean over seeds)")
    left.legend(fontsize=7, ncol=2)
    for selector in selectors:
        stats = [(b, *_stats([r["eval_loss"] for r in table.get((selector, b), [])]))
                 for b in budgets]
        stats = [s for s in stats if not math.isnan(s[1])]
        if stats:
            right.errorbar([s[0] for s in stats], [s[1] for s in stats],
                           yerr=[0 if math.isnan(s[2]) else s[2] for s in stats], marker="o",
                           capsize=3, color=colours[selector], label=selector)
    right.set_xscale("log")
    right.set_xticks(budgets, [f"{b:g}" for b in budgets])
    right.set_xlabel("budget (fraction of the training pool)")
    right.set_ylabel("final held-out loss")
    right.set_title("final loss vs budget (± std over seeds)")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
