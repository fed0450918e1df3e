"""Domain mixtures by tokens: weight specs, temperature sampling, and token schedules.

A mixture says what share of the *tokens* each domain contributes (not of the documents: a
domain of long documents would otherwise dominate). The stream accepts:

- `weights=None`: natural proportions; one epoch delivers every document (x its copies) once.
- `weights={"web": 0.7, "code": 0.3}`: proportions (normalised); domains left out get 0.
- Mosaic-style per-domain dicts: `{"proportion": p}` (share of the epoch's tokens),
  `{"repeat": r}` (r times the domain's own tokens per epoch, 0.5 = half of it), or
  `{"choose": n}` (n tokens per epoch). These may be mixed with each other.
- `alpha=a`: temperature sampling, p_s proportional to tokens_s ** a (1 natural, 0 uniform,
  0.3 as in mT5 / XLM-R).
- `schedule=Schedule(...)`: weights as a piecewise-constant or linear function of the tokens
  consumed in the epoch, e.g. `Schedule.upsample_at_end(base, upsampled, total, fraction=0.15)`
  for the end-of-training domain upsampling of "Does your data spark joy?" (ALGORITHMS.md 6).

Everything resolves to proportions over domains plus an epoch length in tokens; the stream's
chooser then interleaves documents so that realised token shares track the proportions within
one document's length at any point (a smooth weighted round-robin, not i.i.d. draws).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gristmill.errors import ConfigError

MOSAIC_KEYS = ("proportion", "repeat", "choose")


@dataclass(frozen=True)
class Mixture:
    """A resolved mixture.

    Attributes:
        mode: "natural" (every document once per epoch) or "tokens" (an epoch is
            `epoch_tokens` tokens drawn by `proportions`, or by the schedule when one is set).
        proportions: domain -> share of tokens, summing to 1 (natural shares in natural mode).
        epoch_tokens: tokens per epoch in "tokens" mode; total tokens in natural mode.
        schedule: the schedule in "tokens" mode, if any.
    """

    mode: str
    proportions: dict[str, float]
    epoch_tokens: int
    schedule: Schedule | None = None

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "proportions": self.proportions,
                "epoch_tokens": self.epoch_tokens,
                "schedule": None if self.schedule is None else self.schedule.describe()}


def _check_weight(domain: str, value: Any, what: str = "weight") -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} of domain {domain!r} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ConfigError(f"{what} of domain {domain!r} must be finite and >= 0, got {value!r}")
    return number


def _check_domains(names: Sequence[str], domains: Sequence[str], what: str) -> None:
    unknown = sorted(set(names) - set(domains))
    if unknown:
        raise ConfigError(f"{what} names domains {unknown} that are not in the stores; "
                          f"the stores hold {sorted(domains)}")


def resolve_mixture(domain_tokens: Mapping[str, int], *, weights: Any = None,
                    alpha: float | None = None, schedule: Schedule | None = None,
                    epoch_tokens: int | None = None) -> Mixture:
    """Turn the stream's mixing arguments into a `Mixture`.

    Args:
        domain_tokens: domain -> tokens in the stores (with selection copies, expected).
        weights, alpha, schedule: at most one of them (see the module docstring).
        epoch_tokens: tokens per epoch in tokens mode; default the stores' total tokens, or
            the schedule's total.

    Raises:
        ConfigError: negative, non-finite or all-zero weights, unknown domains, two mixing
            arguments at once, a domain weighted > 0 that holds no tokens.
    """
    domains = list(domain_tokens)
    total = int(sum(domain_tokens.values()))
    given = [n for n, v in (("weights", weights), ("alpha", alpha), ("schedule", schedule))
             if v is not None]
    if len(given) > 1:
        raise ConfigError(f"pass one of weights, alpha and schedule, not {' and '.join(given)}")
    if epoch_tokens is not None and (int(epoch_tokens) != epoch_tokens or epoch_tokens < 1):
        raise ConfigError(f"`epoch_tokens` must be a positive integer, got {epoch_tokens!r}")
    if total == 0:
        raise ConfigError("the stores hold no tokens; tokenize a non-empty corpus")
    if schedule is not None:
        if not isinstance(schedule, Schedule):
            raise ConfigError(f"`schedule` must be a gristmill.samplers.Schedule, got "
                              f"{type(schedule).__name__}")
        for phase in schedule.phases:
            for w in (phase.weights, phase.end_weights or {}):
                _check_domains(list(w), domains, "the schedule")
                _check_nonempty(w, domain_tokens)
        if epoch_tokens is not None and epoch_tokens != schedule.total:
            raise ConfigError(f"`epoch_tokens` ({epoch_tokens}) differs from the schedule's "
                              f"total ({schedule.total}); leave it out with a schedule")
        return Mixture("tokens", schedule.weights_at(0), schedule.total, schedule)
    if alpha is not None:
        a = _check_weight("*", alpha, "alpha")
        raw = {d: float(t) ** a if t > 0 else 0.0 for d, t in domain_tokens.items()}
        return Mixture("tokens", _normalise(raw, "alpha"), int(epoch_tokens or total))
    if weights is None:
        if epoch_tokens is not None:
            raise ConfigError("`epoch_tokens` needs weights, alpha or a schedule; natural "
                              "proportions run every document once per epoch")
        return Mixture("natural", {d: t / total for d, t in domain_tokens.items()}, total)
    if not isinstance(weights, Mapping):
        raise ConfigError(f"`weights` must be a dict of domain -> weight, got "
                          f"{type(weights).__name__}")
    _check_domains(list(weights), domains, "weights")
    epoch = int(epoch_tokens or total)
    quotas: dict[str, float] = dict.fromkeys(domains, 0.0)
    shares: dict[str, float] = {}
    for domain, value in weights.items():
        if isinstance(value, Mapping):
            keys = [k for k in value if k in MOSAIC_KEYS]
            if len(keys) != 1 or len(value) != 1:
                raise ConfigError(f"weight of domain {domain!r} must have exactly one of "
                                  f"{MOSAIC_KEYS}, got {dict(value)}")
            key = keys[0]
            number = _check_weight(domain, value[key], key)
            if key == "repeat":
                quotas[domain] = number * domain_tokens[domain]
            elif key == "choose":
                quotas[domain] = number
            else:
                shares[domain] = number
        else:
            shares[domain] = _check_weight(domain, value)
    if shares:
        if sum(shares.values()) <= 0 and not any(quotas.values()):
            raise ConfigError(f"weights are all zero ({dict(weights)}); give some domain a "
                              f"weight > 0")
        norm = sum(shares.values())
        for domain, share in shares.items():
            quotas[domain] += epoch * share / norm if norm else 0.0
    proportions = _normalise(quotas, "weights")
    _check_nonempty(proportions, domain_tokens)
    return Mixture("tokens", proportions, max(1, round(sum(quotas.values()))))


def _check_nonempty(weights: Mapping[str, float], domain_tokens: Mapping[str, int]) -> None:
    empty = [d for d, w in weights.items() if w > 0 and domain_tokens[d] == 0]
    if empty:
        raise ConfigError(f"domains {empty} get weight > 0 but hold no tokens (their documents "
                          f"all have weight 0 or there are none)")


def _normalise(raw: Mapping[str, float], what: str) -> dict[str, float]:
    total = sum(raw.values())
    if not total > 0:
        raise ConfigError(f"{what} give every domain zero weight ({dict(raw)}); give some "
                          f"domain a weight > 0")
    return {d: w / total for d, w in raw.items()}


@dataclass(frozen=True)
class Phase:
    """Weights over tokens [start, end) of an epoch; linear to `end_weights` when given."""

    start: int
    end: int
    weights: dict[str, float]
    end_weights: dict[str, float] | None = None


class Schedule:
    """Mixture weights as a function of tokens consumed in the epoch.

    Phases must tile [0, total] with no gap or overlap. Within a phase the weights are
    constant, or move linearly from `weights` to `end_weights`.

    Example:
        >>> s = Schedule.upsample_at_end({"web": 0.9, "math": 0.1}, {"web": 0.5, "math": 0.5},
        ...                              total=1000, fraction=0.2)
        >>> s.switch_tokens, s.weights_at(100)["math"], s.weights_at(900)["math"]
        (800, 0.1, 0.5)
    """

    def __init__(self, phases: Sequence[Phase | tuple[Any, ...]], *,
                 total: int | None = None) -> None:
        parsed = [p if isinstance(p, Phase) else Phase(*p) for p in phases]
        if not parsed:
            raise ConfigError("a schedule needs at least one phase")
        for phase in parsed:
            for w in (phase.weights, phase.end_weights or {}):
                for domain, value in w.items():
                    _check_weight(domain, value)
            if not sum(phase.weights.values()) > 0 or (
                    phase.end_weights is not None and not sum(phase.end_weights.values()) > 0):
                raise ConfigError(f"schedule phase [{phase.start}, {phase.end}) gives every "
                                  f"domain zero weight")
            if phase.end <= phase.start:
                raise ConfigError(f"schedule phase [{phase.start}, {phase.end}) is empty; "
                                  f"phases need end > start")
        total = parsed[-1].end if total is None else int(total)
        position = 0
        for phase in parsed:
            if phase.start != position:
                kind = "gap" if phase.start > position else "overlap"
                raise ConfigError(f"schedule does not cover [0, {total}]: {kind} at token "
                                  f"{min(position, phase.start)}..{max(position, phase.start)}")
            position = phase.end
        if position != total:
            raise ConfigError(f"schedule does not cover [0, {total}]: its phases end at token "
                              f"{position}")
        self.phases = parsed
        self.total = total

    @classmethod
    def constant(cls, weights: Mapping[str, float], total: int) -> Schedule:
        return cls([Phase(0, int(total), dict(weights))])

    @classmethod
    def linear(cls, start: Mapping[str, float], end: Mapping[str, float],
               total: int) -> Schedule:
        """Blend linearly from `start` at token 0 to `end` at `total`."""
        return cls([Phase(0, int(total), dict(start), dict(end))])

    @classmethod
    def upsample_at_end(cls, base: Mapping[str, float], upsampled: Mapping[str, float],
                        total: int, *, fraction: float = 0.15, blend: float = 0.0) -> Schedule:
        """`base` for the first (1 - fraction) of `total` tokens, then `upsampled`.

        Args:
            fraction: share of the tokens in the upsampled phase; 0.10-0.20 is the paper's
                optimum (ALGORITHMS.md 6.1).
            blend: optional share of `total` before the switch over which base blends
                linearly into upsampled.
        """
        if not 0 < fraction < 1:
            raise ConfigError(f"`fraction` must be in (0, 1), got {fraction}")
        if not 0 <= blend < 1 - fraction:
            raise ConfigError(f"`blend` must be in [0, 1 - fraction), got {blend}")
        total = int(total)
        switch = round((1 - fraction) * total)
        start_blend = switch - round(blend * total)
        phases = [Phase(0, start_blend, dict(base))] if start_blend > 0 else []
        if start_blend < switch:
            phases.append(Phase(start_blend, switch, dict(base), dict(upsampled)))
        phases.append(Phase(switch, total, dict(upsampled)))
        return cls(phases)

    @property
    def switch_tokens(self) -> int:
        """Token where the last phase starts (align the LR decay with it)."""
        return self.phases[-1].start

    def weights_at(self, tokens: int) -> dict[str, float]:
        """Normalised weights at `tokens` consumed (the last phase holds past the end)."""
        phase = self.phases[-1]
        for candidate in self.phases:
            if tokens < candidate.end:
                phase = candidate
                break
        weights = dict(phase.weights)
        if phase.end_weights is not None:
            frac = min(1.0, max(0.0, (tokens - phase.start) / (phase.end - phase.start)))
            names = set(weights) | set(phase.end_weights)
            weights = {d: (1 - frac) * weights.get(d, 0.0) + frac * phase.end_weights.get(d, 0.0)
                       for d in names}
        norm = sum(weights.values())
        return {d: w / norm for d, w in weights.items()}

    def describe(self) -> dict[str, Any]:
        return {"total": self.total, "phases": [
            {"start": p.start, "end": p.end, "weights": p.weights, "end_weights": p.end_weights}
            for p in self.phases]}

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> Schedule:
        return cls([Phase(int(p["start"]), int(p["end"]), dict(p["weights"]),
                          None if p.get("end_weights") is None else dict(p["end_weights"]))
                    for p in payload["phases"]], total=payload.get("total"))

    def __repr__(self) -> str:
        return f"Schedule(total={self.total}, phases={len(self.phases)})"
