"""Batch-size controllers on synthetic gradients of known noise (ALGORITHMS.md 5.4 properties)."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from gristmill.errors import ConfigError, InputError
from gristmill.samplers import (
    CONTROLLERS,
    NoiseScaleController,
    NormTestController,
    ScheduleController,
    make_controller,
)
from gristmill.samplers.controllers import gradient_moments, noise_components, pooled_trace_var


def noisy_grads(rng: np.random.Generator, rows: int, signal: np.ndarray, noise_std: float):
    """(rows, p) per-sample gradients g_i = G + xi_i, xi ~ N(0, noise_std^2 I)."""
    return signal + noise_std * rng.standard_normal((rows, signal.size))


def test_norm_test_is_scale_invariant():
    grads = noisy_grads(np.random.default_rng(0), 64, np.ones(10), 0.8)
    batches = set()
    for scale in [1e-4, 0.5, 3.0, 1e5]:
        ctl = NormTestController(micro_batch_rows=4, world_size=2, max_batch=4096)
        ctl.observe(grads * scale)
        batches.add(ctl.plan().global_batch)
    assert len(batches) == 1 and batches.pop() > 8


def test_zero_variance_never_grows():
    ctl = NormTestController(micro_batch_rows=8, max_batch=512)
    for _ in range(20):
        ctl.observe(np.tile(np.arange(1.0, 6.0), (16, 1)))  # identical per-sample gradients
    ctl.observe(trace_var=0.0, mean_grad_sq_norm=0.0)
    assert ctl.plan().global_batch == 8 and ctl.plan().lr_multiplier == 1.0


def test_pure_noise_grows_to_the_cap():
    noise = np.random.default_rng(1).standard_normal((8, 6))
    ctl = NormTestController(micro_batch_rows=8, max_batch=500)
    ctl.observe(np.concatenate([noise, -noise]))  # mean gradient exactly 0
    assert ctl.plan().global_batch == 496  # cap rounded down to a multiple of 8
    assert not ctl.plan().measure  # at the cap the test stops asking for gradients
    summary = NormTestController(micro_batch_rows=8, max_batch=500)
    summary.observe(trace_var=1.0, mean_grad_sq_norm=0.0)
    assert summary.plan().global_batch == 496


def test_norm_test_batch_grows_with_noise_monotone_quantised_capped():
    rng = np.random.default_rng(2)
    ctl = NormTestController(micro_batch_rows=4, world_size=2, max_batch=1000, eta=0.1)
    batches = []
    # tr(Sigma) / |G|^2 = s^2, so the test asks for about 100 s^2 rows.
    for noise_std in np.linspace(0.05, 4.0, 60):
        ctl.observe(noisy_grads(rng, min(ctl.plan().global_batch, 256), np.ones(10), noise_std))
        batches.append(ctl.plan().global_batch)
    assert all(a <= b for a, b in zip(batches[:-1], batches[1:], strict=True))
    assert all(b % 8 == 0 and b <= 1000 for b in batches)
    assert batches[0] == 8 and batches[-1] == 1000 // 8 * 8
    # at s = 1.0 the test wants ~100 rows: observed 96
    at_one = batches[int(np.searchsorted(np.linspace(0.05, 4.0, 60), 1.0))]
    assert 64 <= at_one <= 256


def test_per_sample_forms_agree_and_torch_matches_numpy():
    grads = noisy_grads(np.random.default_rng(3), 32, np.full(7, 0.5), 1.3)
    trace, mean_sq = gradient_moments(grads)
    assert gradient_moments(torch.from_numpy(grads).float()) == pytest.approx((trace, mean_sq),
                                                                              rel=1e-5)
    plans = []
    for stats in [{"per_sample_grads": grads},
                  {"grad_sq_norms": (grads**2).sum(1), "mean_grad_sq_norm": mean_sq},
                  {"trace_var": trace, "mean_grad_sq_norm": mean_sq}]:
        ctl = NormTestController(micro_batch_rows=2, max_batch=10_000)
        ctl.observe(**stats)
        plans.append(ctl.plan())
    assert plans[0] == plans[1] == plans[2]
    assert plans[0].global_batch == 2 * math.ceil(trace / (0.01 * mean_sq) / 2)


def test_law_of_total_variance_pools_micro_batches():
    rng = np.random.default_rng(4)
    parts = [noisy_grads(rng, 2000, np.linspace(-1, 1, 12), 2.0) for _ in range(4)]
    whole = np.concatenate(parts)
    moments = [gradient_moments(part) for part in parts]
    pooled_mean_sq = float((whole.mean(0) ** 2).sum())
    pooled = pooled_trace_var([2000] * 4, [t for t, _ in moments], [m for _, m in moments],
                              pooled_mean_sq)
    assert pooled == pytest.approx(gradient_moments(whole)[0], rel=1e-10)
    # ALGORITHMS.md 5.1's form, mean_r sigma_r^2 + mean_r ||g_r||^2 - ||g||^2, differs only by
    # Bessel factors at large b: observed relative gap 3.8e-4.
    approx = np.mean([t for t, _ in moments]) + np.mean([m for _, m in moments]) - pooled_mean_sq
    assert approx == pytest.approx(pooled, rel=1e-3)
    via_summary = NormTestController(micro_batch_rows=8, max_batch=10**6)
    via_summary.observe(trace_var=pooled, mean_grad_sq_norm=pooled_mean_sq)
    via_whole = NormTestController(micro_batch_rows=8, max_batch=10**6)
    via_whole.observe(whole)
    assert via_summary.plan() == via_whole.plan()


def simulate_noise_scale(steps: int, seed: int, g_sq: float, trace: float):
    """Per step: the (small, big) squared norms of a micro-batch of 8 inside a batch of 64."""
    rng, dim = np.random.default_rng(seed), 40
    signal = np.full(dim, math.sqrt(g_sq / dim))
    for _ in range(steps):
        grads = noisy_grads(rng, 64, signal, math.sqrt(trace / dim))
        yield float((grads[:8].mean(0) ** 2).sum()), float((grads.mean(0) ** 2).sum())


def test_noise_components_are_unbiased_and_b_simple_converges():
    # Known tr(Sigma) = 40, |G|^2 = 0.5, so B_simple = 80 rows.
    stats = list(simulate_noise_scale(400, 5, g_sq=0.5, trace=40.0))
    est = np.array([noise_components(small, big, 8, 64) for small, big in stats])
    assert est[:, 0].mean() == pytest.approx(0.5, rel=0.15)  # observed 0.495
    assert est[:, 1].mean() == pytest.approx(40.0, rel=0.05)  # observed 40.5
    ctl = NoiseScaleController(micro_batch_rows=8, max_batch=4096, smoothing=0.99,
                               min_observations=400)
    for small, big in stats:
        ctl.observe(small_sq_norm=small, big_sq_norm=big, big_batch=64)
    # observed 78.2 after 400 steps; with the default smoothing 0.9 (a ~10-step window) the same
    # data gives 59.7, with 0.95 66.0: short windows are noisy, so smooth hard for estimates.
    assert ctl.b_simple == pytest.approx(80.0, rel=0.2)
    assert ctl.plan().global_batch == 8 * math.ceil(ctl.b_simple / 8)


def test_noise_scale_grows_with_noise_never_shrinks_and_caps():
    ctl = NoiseScaleController(micro_batch_rows=8, max_batch=300, start_batch=16,
                               min_observations=5)
    batches = []
    for trace in [2.0, 20.0, 200.0, 2.0]:  # B_simple 4, 40, 400 (> cap), then back to 4
        for small, big in simulate_noise_scale(40, 6, g_sq=0.5, trace=trace):
            ctl.observe(small_sq_norm=[small, small], big_sq_norm=big, big_batch=64)
            batches.append(ctl.plan().global_batch)
    assert all(a <= b for a, b in zip(batches[:-1], batches[1:], strict=True))
    # observed 16, 48, 296 at the end of each phase
    assert batches[39] == 16 and 32 <= batches[79] <= 80 and batches[-1] == 296
    assert all(b % 8 == 0 for b in batches)


def test_noise_scale_needs_two_batch_sizes():
    ctl = NoiseScaleController(micro_batch_rows=8, max_batch=64)
    with pytest.raises(InputError, match="two batch sizes"):
        ctl.observe(small_sq_norm=1.0, big_sq_norm=0.5)  # global batch == micro-batch
    with pytest.raises(InputError, match="small_sq_norm"):
        ctl.observe()


@pytest.mark.parametrize(("optimizer", "factor"), [("sgd", 2.0), ("adam", math.sqrt(2.0))])
def test_doubling_the_batch_scales_the_lr(optimizer, factor):
    ctl = ScheduleController(micro_batch_rows=8, stages=[(0, 16), (100, 32)], base_batch=16,
                             optimizer=optimizer)
    before = ctl.plan()
    ctl.observe(tokens=100)
    after = ctl.plan()
    assert (before.global_batch, after.global_batch) == (16, 32)
    assert before.lr_multiplier == 1.0
    assert after.lr_multiplier / before.lr_multiplier == pytest.approx(factor, rel=1e-12)
    capped = ScheduleController(micro_batch_rows=8, stages=[(0, 16), (1, 64)], base_batch=16,
                                optimizer=optimizer, max_lr_multiplier=1.5)
    capped.observe(tokens=1)
    assert capped.plan().lr_multiplier == 1.5


def test_schedule_ramp_hits_the_endpoints_and_quantises():
    ctl = ScheduleController(micro_batch_rows=3, world_size=2, start_batch=6, end_batch=100,
                             ramp_tokens=10_000)
    assert ctl.plan().global_batch == 6 and ctl.max_batch == 96  # cap 100 rounds down to 96
    batches = []
    for _ in range(12):
        ctl.observe(tokens=1000)
        batches.append(ctl.plan().global_batch)
    assert batches[4] == 54  # 6 + 0.5 * 94 = 53 rows, rounded up to a multiple of 6
    assert batches[9:] == [96, 96, 96]
    assert all(b % 6 == 0 for b in batches) and batches == sorted(batches)
    assert [p.accum_steps for p in [ctl.plan()]] == [16]
    jump = ScheduleController(micro_batch_rows=4, end_batch=32, ramp_tokens=0)
    assert jump.plan().global_batch == 32


def test_stagewise_schedule_follows_boundaries():
    ctl = ScheduleController(micro_batch_rows=8, stages=[(0, 8), (50, 20), (120, 64)])
    seen = []
    for _ in range(7):
        ctl.observe(tokens=25)
        seen.append((ctl.tokens, ctl.plan().global_batch))
    assert seen == [(25, 8), (50, 24), (75, 24), (100, 24), (125, 64), (150, 64), (175, 64)]


def drive(ctl, step: int):
    """Feed one deterministic synthetic step to any policy."""
    if isinstance(ctl, ScheduleController):
        ctl.observe(tokens=1000)
    elif isinstance(ctl, NormTestController):
        ctl.observe(noisy_grads(np.random.default_rng(step), 32, np.ones(5), 0.1 * step))
    else:
        small, big = next(simulate_noise_scale(1, step, g_sq=0.5, trace=4.0 * step))
        ctl.observe(small_sq_norm=small, big_sq_norm=big, big_batch=64)


POLICIES = {
    "norm_test": {"micro_batch_rows": 4, "max_batch": 2048},
    "noise_scale": {"micro_batch_rows": 4, "max_batch": 2048, "min_observations": 3},
    "schedule": {"micro_batch_rows": 4, "end_batch": 200, "ramp_tokens": 20_000},
}


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_state_dict_round_trip_gives_identical_future_plans(name):
    original = make_controller(name, **POLICIES[name])
    for step in range(1, 8):
        drive(original, step)
    state = json.loads(json.dumps(original.state_dict()))  # JSON-able
    resumed = make_controller(name, **POLICIES[name])
    resumed.load_state_dict(state)
    future = []
    for step in range(8, 20):
        drive(original, step)
        drive(resumed, step)
        future.append((original.plan(), resumed.plan()))
    assert all(a == b for a, b in future)
    assert future[-1][0].global_batch > 4  # the run did move


def test_load_refuses_a_differently_configured_state():
    saved = NormTestController(micro_batch_rows=4, max_batch=64, eta=0.2).state_dict()
    with pytest.raises(ConfigError, match="`eta` differs"):
        NormTestController(micro_batch_rows=4, max_batch=64).load_state_dict(saved)
    with pytest.raises(ConfigError, match="`max_batch` differs"):
        NormTestController(micro_batch_rows=4, max_batch=128, eta=0.2).load_state_dict(saved)
    with pytest.raises(ConfigError, match="norm_test"):
        NoiseScaleController(micro_batch_rows=4, max_batch=64).load_state_dict(saved)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"micro_batch_rows": 0, "max_batch": 64}, "micro_batch_rows"),
    ({"micro_batch_rows": 8, "world_size": 4, "max_batch": 16}, "max_batch"),
    ({"micro_batch_rows": 8, "max_batch": 64, "eta": 0.0}, "eta"),
    ({"micro_batch_rows": 8, "max_batch": 64, "eta": -1.0}, "eta"),
    ({"micro_batch_rows": 8, "max_batch": 64, "optimizer": "lion"}, "optimizer"),
    ({"micro_batch_rows": 8, "max_batch": 64, "lr_exponent": 2.0}, "lr_exponent"),
    ({"micro_batch_rows": 8, "max_batch": 64, "start_batch": 128}, "start_batch"),
])
def test_bad_arguments_name_the_parameter(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        NormTestController(**kwargs)


def test_registry_and_unknown_name():
    assert set(CONTROLLERS) == {"norm_test", "noise_scale", "schedule"}
    with pytest.raises(ConfigError, match="norm_test"):
        make_controller("adabatch", micro_batch_rows=8, max_batch=64)
    with pytest.raises(ConfigError, match="smoothing"):
        make_controller("noise_scale", micro_batch_rows=8, max_batch=64, smoothing=1.0)
    with pytest.raises(ConfigError, match="stages"):
        make_controller("schedule", micro_batch_rows=8, stages=[(5, 8)])


def test_observe_demands_statistics_only_when_planned():
    ctl = NormTestController(micro_batch_rows=8, max_batch=64, test_every=2)
    with pytest.raises(InputError, match="per_sample_grads"):
        ctl.observe()
    ctl.observe(trace_var=0.0, mean_grad_sq_norm=1.0)
    assert not ctl.plan().measure  # step 1 of every 2: no test
    ctl.observe()
    assert ctl.plan().measure and ctl.steps == 2


def test_readme_example_runs():
    # The README's training-loop example, verbatim between the markers.
    # --- README example ---
    import torch
    from torch.func import functional_call, grad, vmap

    from gristmill.samplers import make_controller

    torch.manual_seed(0)
    model, loss_fn, base_lr = torch.nn.Linear(16, 1), torch.nn.functional.mse_loss, 1e-2
    opt = torch.optim.AdamW(model.parameters(), lr=base_lr)
    ctl = make_controller("norm_test", micro_batch_rows=8, max_batch=256, optimizer="adam")
    stream = iter([(x, x.sum(1, keepdim=True) + torch.randn(8, 1))  # stand-in micro-batches
                   for x in torch.randn(4000, 8, 16)])

    def sample_loss(params, x, y):  # one sample's loss, for per-sample gradients
        return loss_fn(functional_call(model, params, (x[None],)), y[None])

    for _step in range(60):
        plan = ctl.plan()  # decided at the optimizer-step boundary
        opt.zero_grad()
        rows = []  # (8, p) per-sample gradients of each micro-batch
        for _ in range(plan.accum_steps):
            x, y = next(stream)
            (loss_fn(model(x), y) / plan.accum_steps).backward()
            params = {k: v.detach() for k, v in model.named_parameters()}
            grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, y)
            rows.append(torch.cat([g.flatten(1) for g in grads.values()], 1))
        for group in opt.param_groups:
            group["lr"] = base_lr * plan.lr_multiplier  # sqrt rule for Adam
        opt.step()
        ctl.observe(torch.cat(rows) if plan.measure else None)
    # --- end README example ---

    # observed: the batch grows from 8 to the 256-row cap (LR x 5.66) as the loss nears its
    # noise floor; the last test asked for 854 rows.
    assert ctl.plan().global_batch == 256
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * math.sqrt(256 / 8))


def test_readme_shows_this_example_verbatim():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Adaptive batch size (Python)", 1)[1]
    shown = section.split("```python\n", 1)[1].split("```", 1)[0]
    source = Path(__file__).read_text()
    block = source.split("    # --- README example ---\n")[1].split("    # --- end README")[0]
    assert shown == textwrap.dedent(block).rstrip() + "\n"
