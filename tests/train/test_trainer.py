"""train(): loss falls, exact token budget, token-normalised accumulation, per-domain eval,
controllers, hard-batch filter, determinism, resume and bad input."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch import nn
from train_corpus import VOCAB, pattern_docs

from gristmill.errors import ConfigError
from gristmill.samplers import GristmillStream, make_controller
from gristmill.train import (
    ProxyLM,
    ProxyOutput,
    TrainConfig,
    accumulate,
    evaluate,
    hard_batch,
    lr_factor,
    train,
)
from gristmill.train.batches import real_tokens, trim_batch


@pytest.fixture
def store(make_store):
    return make_store({"web": pattern_docs(40), "code": pattern_docs(20, first=30)})


def stream_of(store, rows=4, seq_len=64, **kwargs) -> GristmillStream:
    return GristmillStream(store, seq_len=seq_len, micro_batch_rows=rows, **kwargs)


def test_loss_falls_on_a_repeated_corpus(store, tiny_config):
    held_out = list(stream_of(store, num_epochs=1, seed=1))
    cfg = TrainConfig(max_tokens=30_000, lr=3e-3, warmup=0.02, eval_every_tokens=10_000)
    result = train(stream_of(store, seed=0), tiny_config, cfg, eval_batches=held_out,
                   log_every=10)
    first, last = result.curves[0]["train_loss"], result.curves[-1]["train_loss"]
    assert first > 2.5 and last < 0.25 * first  # observed 3.77 -> 0.30 (log 64 = 4.16)
    assert result.eval_loss < 0.6  # observed 0.32 (web 0.21, code 0.53)
    assert set(result.eval_loss_by_domain) == {"web", "code"}
    # Evaluated at the first step past every 10k tokens (steps are ~250 tokens), and at the end.
    assert all(t <= e["tokens"] < t + 1000 for e, t in
               zip(result.eval_curves, (10_000, 20_000, 30_000), strict=True))
    assert result.eval_curves[-1]["tokens"] == 30_000
    assert result.eval_curves[0]["eval_loss"] > result.eval_curves[-1]["eval_loss"]
    steps = [c["step"] for c in result.curves]
    assert steps == sorted(steps) and steps[-1] == result.steps
    assert all(c["batch_rows"] == 4 and c["lr_multiplier"] == 1.0 for c in result.curves)


def test_stops_on_exactly_max_tokens_or_at_the_end_of_the_stream(store, tiny_config):
    result = train(stream_of(store, seed=0), tiny_config, TrainConfig(max_tokens=1234))
    assert result.tokens == 1234 and not result.stream_ended
    one_epoch = stream_of(store, num_epochs=1, seed=0)
    total = sum(b["num_tokens"] for b in stream_of(store, num_epochs=1, seed=0))
    short = train(one_epoch, tiny_config, TrainConfig(max_tokens=10 * total))
    assert short.tokens == short.tokens_read == total and short.stream_ended


def test_trimmed_batch_keeps_a_prefix_of_real_tokens(store):
    batch = next(iter(stream_of(store, rows=4, seed=0)))
    cut = trim_batch(batch, 100)
    assert cut["num_tokens"] == real_tokens(cut) == 100
    seg = cut["segment_ids"]
    for i, record in enumerate(cut["segments"]):
        row = seg[record["row"]]
        where = (row == i).nonzero().flatten()
        assert where[0] == record["offset"] and len(where) == record["end"] - record["start"]
    assert (cut["labels"][seg < 0] == -100).all()
    kept = (seg >= 0).reshape(-1).nonzero().flatten()
    assert kept.tolist() == (batch["segment_ids"] >= 0).reshape(-1).nonzero().flatten()[
        :100].tolist()  # the first 100 real tokens in row-major order


def test_eval_batches_as_a_dict_or_a_callable(store, tiny_config):
    batches = list(stream_of(store, num_epochs=1, seed=1))[:3]
    cfg = TrainConfig(max_tokens=500)
    plain = train(stream_of(store, seed=0), tiny_config, cfg, eval_batches=batches)
    as_dict = train(stream_of(store, seed=0), tiny_config, cfg,
                    eval_batches={"a": batches[:1], "b": batches[1:]}, progress=True)
    called = train(stream_of(store, seed=0), tiny_config, cfg, eval_batches=lambda: batches)
    assert plain.eval_loss == as_dict.eval_loss == called.eval_loss
    assert plain.summary()["eval_loss_web"] == plain.eval_loss_by_domain["web"]
    assert evaluate(plain.model, batches) == pytest.approx(plain.eval_loss_by_domain)
    tokens = plain.eval_tokens_by_domain
    assert plain.eval_loss == pytest.approx(sum(
        plain.eval_loss_by_domain[d] * n for d, n in tokens.items()) / sum(tokens.values()))


def test_accumulation_normalises_by_all_label_tokens(store, tiny_config):
    batches = list(stream_of(store, rows=2, num_epochs=1, seed=0))[:2]
    counts = [int((b["labels"][:, 1:] != -100).sum()) for b in batches]
    assert counts[0] != counts[1]  # unequal micro-batches: a per-micro-batch mean would differ
    big = {k: torch.cat([b[k] for b in batches]) for k in
           ("input_ids", "labels", "position_ids", "segment_ids")}

    def grads(micro_batches):
        torch.manual_seed(0)
        model = ProxyLM(tiny_config)
        loss, tokens, _ = accumulate(model, micro_batches, autocast=contextlib.nullcontext())
        return loss / tokens, torch.cat([p.grad.flatten() for p in model.parameters()])

    loss_acc, g_acc = grads(batches)
    loss_big, g_big = grads([big])
    assert loss_acc == pytest.approx(loss_big, rel=1e-6)
    torch.testing.assert_close(g_acc, g_big, atol=1e-7, rtol=1e-4)
    # The naive alternative (mean of the micro-batch means) is measurably different.
    torch.manual_seed(0)
    model = ProxyLM(tiny_config)
    for b in batches:
        out = model(b["input_ids"], b["position_ids"], b["segment_ids"], labels=b["labels"])
        (out.loss_sum / out.label_tokens / len(batches)).backward()
    naive = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert (naive - g_big).abs().max() > 100 * (g_acc - g_big).abs().max()


def test_chunk_statistics_are_the_chunks_own_gradients(store, tiny_config):
    batches = list(stream_of(store, rows=4, num_epochs=1, seed=0))[:2]
    torch.manual_seed(0)
    model = ProxyLM(tiny_config)
    _, total, stats = accumulate(model, batches, autocast=contextlib.nullcontext(),
                                 grad_chunks=2)
    step = torch.cat([p.grad.flatten() for p in model.parameters()])
    chunks = [{k: b[k][rows] for k in ("input_ids", "labels", "position_ids", "segment_ids")}
              for b in batches for rows in (slice(0, 2), slice(2, 4))]
    own = []
    for chunk in chunks:  # h_i = b * grad(loss_sum_i / N): b samples whose mean is the step
        model.zero_grad()
        out = model(chunk["input_ids"], chunk["position_ids"], chunk["segment_ids"],
                    labels=chunk["labels"])
        (out.loss_sum * len(chunks) / total).backward()
        own.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(torch.stack(own).mean(0), step, atol=1e-7, rtol=1e-4)
    assert stats.chunk_sq_norms == pytest.approx([float(h.square().sum()) for h in own],
                                                 rel=1e-4)
    assert stats.step_sq_norm == pytest.approx(float(step.square().sum()), rel=1e-5)
    assert stats.chunk_rows == [2, 2, 2, 2] and stats.rows_per_chunk == 2


class CopyModel(nn.Module):
    """Predicts "the next token repeats this one" with probability e^a / (e^a + V - 1)."""

    def __init__(self, a: float = 2.0) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))

    def forward(self, input_ids, position_ids, segment_ids, labels=None):
        return ProxyOutput(nn.functional.one_hot(input_ids, VOCAB).float() * self.a)


def test_per_domain_eval_attributes_tokens_by_segment(make_store):
    # "same" documents repeat one token, "alt" documents alternate two: under CopyModel their
    # per-token losses are known in closed form, whatever the packing mixes into a row.
    same = [[5] * n for n in (7, 12, 30, 3, 18)]
    alt = [[6 + t % 2 for t in range(n)] for n in (9, 25, 4, 16)]
    store = make_store({"same": same, "alt": alt})
    batches = list(stream_of(store, rows=2, seq_len=32, num_epochs=1, seed=3))
    assert any(len({s["domain"] for s in b["segments"] if s["row"] == r}) == 2
               for b in batches for r in range(2))  # some row really mixes the domains
    a = 2.0
    norm = math.log(math.exp(a) + VOCAB - 1)
    losses = evaluate(CopyModel(a), batches)
    assert losses["same"] == pytest.approx(norm - a, rel=1e-5)
    assert losses["alt"] == pytest.approx(norm, rel=1e-5)
    by_doc = evaluate(CopyModel(a), batches, by="doc_id")
    assert set(by_doc) == {f"same-{i}" for i in range(5)} | {f"alt-{i}" for i in range(4)}


def test_packed_eval_equals_each_document_alone(store, tiny_config):
    torch.manual_seed(0)
    model = ProxyLM(tiny_config)
    packed = list(stream_of(store, rows=4, num_epochs=1, seed=0))  # seq_len 64: no splits
    alone = []
    for batch in packed:
        for seg in batch["segments"]:
            length = seg["end"] - seg["start"]
            ids = batch["input_ids"][seg["row"], seg["offset"]:seg["offset"] + length]
            labels = ids.clone()
            labels[0] = -100
            alone.append({"input_ids": ids[None], "labels": labels[None],
                          "position_ids": torch.arange(len(ids))[None],
                          "segment_ids": torch.zeros(1, len(ids), dtype=torch.long),
                          "segments": [{**seg, "row": 0, "offset": 0}]})
    by_domain, one_by_one = evaluate(model, packed), evaluate(model, alone)
    assert by_domain.keys() == one_by_one.keys() == {"web", "code"}
    for domain in by_domain:
        assert by_domain[domain] == pytest.approx(one_by_one[domain], rel=1e-5)


def test_schedule_controller_ramps_accumulation(store, tiny_config):
    ctl = make_controller("schedule", micro_batch_rows=2, stages=[(0, 2), (1500, 4), (3000, 8)])
    result = train(stream_of(store, rows=2, seed=0), tiny_config,
                   TrainConfig(max_tokens=6000), controller=ctl, log_every=1)
    seen = [(c["batch_rows"], c["accum_steps"], round(c["lr_multiplier"], 4))
            for c in result.curves]
    assert seen[0] == (2, 1, 1.0) and seen[-1][1:] == (4, 2.0)  # sqrt rule: (8 / 2) ** 0.5
    assert (4, 2, 1.4142) in seen
    ramp = [c["accum_steps"] for c in result.curves]
    assert ramp == sorted(ramp)
    first_big = next(c for c in result.curves if c["accum_steps"] == 2)
    assert first_big["tokens"] > 1500  # the stage starts after 1500 tokens were trained
    assert ctl.tokens == result.tokens == 6000 and ctl.steps == result.steps
    # The last step is cut to the budget: it may back-propagate fewer micro-batches.
    assert sum(ramp[:-1]) < result.micro_batches <= sum(ramp)


@pytest.mark.parametrize("name", ["norm_test", "noise_scale"])
def test_gradient_controllers_are_fed_chunk_statistics(store, tiny_config, name):
    extra = {"min_observations": 2} if name == "noise_scale" else {"eta": 0.5}
    ctl = make_controller(name, micro_batch_rows=4, max_batch=32, **extra)
    result = train(stream_of(store, seed=0), tiny_config, TrainConfig(max_tokens=5000),
                   controller=ctl, log_every=1)
    assert ctl.steps == result.steps
    rows = [c["batch_rows"] for c in result.curves]
    assert rows[0] == 4 and max(rows) > 4  # noisy tiny batches: both grow the batch
    # Never shrinking (the last step may be cut short by the token budget).
    assert all(r % 4 == 0 and r <= 32 for r in rows) and rows[:-1] == sorted(rows[:-1])
    if name == "noise_scale":
        assert ctl.observations >= 2 and ctl.b_simple is not None
    else:
        assert ctl.last_suggestion is not None


def test_hard_batch_keeps_the_highest_loss_micro_batch(store, tiny_config):
    torch.manual_seed(0)
    model = ProxyLM(tiny_config)
    batches = list(stream_of(store, rows=2, num_epochs=1, seed=0))[:3]
    with torch.no_grad():
        losses = [float(o.loss_sum) / o.label_tokens for o in
                  (model(b["input_ids"], b["position_ids"], b["segment_ids"],
                         labels=b["labels"]) for b in batches)]
    chosen = hard_batch(3)(model, batches)
    assert len(chosen) == 1 and chosen[0] is batches[losses.index(max(losses))]
    assert hard_batch(1)(model, batches) == batches
    result = train(stream_of(store, seed=0), tiny_config, TrainConfig(max_tokens=3000),
                   batch_filter=hard_batch(2))
    assert result.tokens == 3000 and result.tokens_read >= 2 * 3000 - 300
    with pytest.raises(ConfigError, match="k"):
        hard_batch(0)


def test_same_seed_same_run_and_global_rng_untouched(store, tiny_config):
    cfg = TrainConfig(max_tokens=2000, seed=7)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    runs = [train(stream_of(store, seed=0), tiny_config, cfg, log_every=1) for _ in range(2)]
    assert torch.rand(1) == before
    assert runs[0].curves == runs[1].curves
    other = train(stream_of(store, seed=0), tiny_config, TrainConfig(max_tokens=2000, seed=8),
                  log_every=1)
    assert other.curves != runs[0].curves


def test_resume_continues_the_schedule(store, tiny_config):
    cfg = TrainConfig(max_tokens=4000, warmup=0.0)
    stream = stream_of(store, seed=0)
    first = train(stream, tiny_config, cfg, until_tokens=2000, log_every=1)
    assert first.tokens == 2000
    rest = train(stream, tiny_config, cfg, resume=first.state, log_every=1)
    assert rest.tokens == 4000 and rest.steps > first.steps
    assert rest.curves[0]["lr"] < first.curves[-1]["lr"]  # cosine keeps decaying
    assert rest.curves[-1]["lr"] == pytest.approx(cfg.lr * cfg.min_lr_ratio, rel=1e-9)


def test_lr_schedules_by_tokens():
    cos = TrainConfig(max_tokens=1000, warmup=0.1, min_lr_ratio=0.1)
    assert lr_factor(50, cos) == pytest.approx(0.5)
    assert lr_factor(100, cos) == pytest.approx(1.0)
    assert lr_factor(550, cos) == pytest.approx(0.55)
    assert lr_factor(1000, cos) == pytest.approx(0.1)
    wsd = TrainConfig(max_tokens=1000, warmup=0.1, schedule="wsd", decay_fraction=0.2,
                      min_lr_ratio=0.0)
    assert lr_factor(500, wsd) == 1.0 and lr_factor(800, wsd) == 1.0
    assert lr_factor(900, wsd) == pytest.approx(0.5) and lr_factor(1000, wsd) == 0.0


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"schedule": "linear"}, "schedule"), ({"max_tokens": 0}, "max_tokens"),
    ({"warmup": 1.5}, "warmup"), ({"device": "tpu"}, "device"),
    ({"schedule": "wsd", "warmup": 0.5, "decay_fraction": 0.6}, "decay_fraction"),
    ({"grad_chunks": 1}, "grad_chunks"), ({"lr": -1.0}, "lr")])
def test_bad_train_config_is_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**{"max_tokens": 100, **kwargs})


def test_mismatched_controller_is_refused(store, tiny_config):
    ctl = make_controller("schedule", micro_batch_rows=8, stages=[(0, 8)])
    with pytest.raises(ConfigError, match="micro_batch_rows"):
        train(stream_of(store, rows=4), tiny_config, TrainConfig(max_tokens=100),
              controller=ctl)
    with pytest.raises(ConfigError, match="world_size"):
        train(stream_of(store, rows=4), tiny_config, TrainConfig(max_tokens=100),
              controller=make_controller("schedule", micro_batch_rows=4, world_size=2,
                                         stages=[(0, 8)]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_on_a_machine_without_it_is_refused(store, tiny_config):
    with pytest.raises(ConfigError, match="CUDA is not available"):
        train(stream_of(store), tiny_config, TrainConfig(max_tokens=100, device="cuda"))


@pytest.mark.gpu
def test_trains_on_cuda_in_bf16_and_matches_cpu_logits(store, tiny_config):
    batch = next(iter(stream_of(store, seed=0)))
    torch.manual_seed(0)
    model = ProxyLM(tiny_config).eval()
    args = [batch[k] for k in ("input_ids", "position_ids", "segment_ids")]
    with torch.no_grad():
        cpu = model(*args).logits
        gpu = model.cuda()(*[a.cuda() for a in args]).logits.cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-4)
    result = train(stream_of(store, seed=0), tiny_config,
                   TrainConfig(max_tokens=3000, device="cuda", bf16=True),
                   eval_batches=[batch])
    assert result.tokens == 3000 and math.isfinite(result.eval_loss)
