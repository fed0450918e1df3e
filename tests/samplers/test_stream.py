"""GristmillStream: exactly-once sharding, equal steps per rank, mixing, schedules, resume."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokstores import VOCAB, batch_key, write_token_store
from torch.utils.data import DataLoader

from gristmill.errors import ConfigError, InputError
from gristmill.packing import IGNORE_INDEX
from gristmill.samplers import GristmillStream, Schedule
from gristmill.storage.tokens import TokenStore


def stream(store, **kwargs):
    kwargs.setdefault("seq_len", 256)
    kwargs.setdefault("micro_batch_rows", 4)
    kwargs.setdefault("buffer_docs", 64)
    kwargs.setdefault("num_epochs", 1)
    return GristmillStream(store, **kwargs)


def delivered(batches):
    """(doc_id, copy) -> sorted list of (start, end) over all batches."""
    out = defaultdict(list)
    for batch in batches:
        for seg in batch["segments"]:
            out[(seg["doc_id"], seg["copy"])].append((seg["start"], seg["end"]))
    return {k: sorted(v) for k, v in out.items()}


def assert_tiles(spans, length):
    """Segments of one document copy cover [0, length) exactly once."""
    position = 0
    for start, end in spans:
        assert start == position, f"gap or overlap at {start} (expected {position})"
        position = end
    assert position == length


def doc_lengths(store):
    ts = TokenStore.open(store)
    return {doc_id: int(n) for d in ts.domains.values()
            for doc_id, n in zip(d.column("id"), d.lengths, strict=True)}


def test_one_epoch_delivers_every_token_once_with_correct_tensors(token_store):
    ts = TokenStore.open(token_store)
    batches = list(stream(token_store))
    got = delivered(batches)
    lengths = doc_lengths(token_store)
    assert {k[0] for k in got} == set(lengths) and all(k[1] == 0 for k in got)
    for (doc_id, _), spans in got.items():
        assert_tiles(spans, lengths[doc_id])
    tokens = {}
    for d in ts.domains.values():
        for i, doc_id in enumerate(d.column("id")):
            tokens[doc_id] = d.doc_tokens(i)
    for batch in batches:
        ids, labels, pos = batch["input_ids"], batch["labels"], batch["position_ids"]
        assert ids.shape == labels.shape == pos.shape == (4, 256)
        assert ids.dtype == torch.int64
        assert batch["cu_seqlens"][-1] == 4 * 256 and batch["cu_seqlens"].dtype == torch.int32
        assert (labels[pos == 0] == IGNORE_INDEX).all()
        for seg in batch["segments"]:
            row, off, n = seg["row"], seg["offset"], seg["end"] - seg["start"]
            want = tokens[seg["doc_id"]][seg["start"]:seg["end"]]
            assert np.array_equal(ids[row, off:off + n].numpy(), want)
            assert np.array_equal(pos[row, off:off + n].numpy(), np.arange(n))
            assert labels[row, off] == IGNORE_INDEX
            assert torch.equal(labels[row, off + 1:off + n], ids[row, off + 1:off + n])
            assert seg["domain"] in ts.domains and seg["selector"] == "synthetic"
        real = (batch["segment_ids"] >= 0)
        assert int(real.sum()) == batch["num_tokens"]
        assert (labels[~real] == IGNORE_INDEX).all() and (ids[~real] == 1).all()  # pad id 1


def consume(store, world, workers, **kwargs):
    """Batches per rank, each rank's batches in DataLoader order (workers interleaved)."""
    per_rank = []
    for rank in range(world):
        per_worker = [list(stream(store, rank=rank, world_size=world, worker_id=k,
                                  num_workers=workers, **kwargs)) for k in range(workers)]
        merged, j = [], 0  # DataLoader reads worker j % workers for the j-th batch
        while j // workers < len(per_worker[j % workers]):
            merged.append(per_worker[j % workers][j // workers])
            j += 1
        assert sum(len(p) for p in per_worker) == len(merged), "a worker lags out of order"
        per_rank.append(merged)
    return per_rank


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(world=st.integers(1, 8), workers=st.integers(0, 4), seed=st.integers(0, 2**16),
       docs=st.lists(st.tuples(st.integers(1, 40), st.integers(5, 300)), min_size=1,
                     max_size=3),
       rows=st.integers(1, 4), seq_len=st.sampled_from([16, 64, 128]))
def test_exactly_once_and_equal_steps_over_ranks_and_workers(tmp_path_factory, world, workers,
                                                             seed, docs, rows, seq_len):
    domains = {f"d{i}": spec for i, spec in enumerate(docs)}
    store = write_token_store(tmp_path_factory.mktemp("h") / "s", domains, seed=seed)
    per_rank = consume(store, world, max(1, workers), seq_len=seq_len, micro_batch_rows=rows,
                       seed=seed, buffer_docs=16)
    assert len({len(b) for b in per_rank}) == 1, "ranks run different numbers of steps"
    got = delivered(b for rank in per_rank for b in rank)
    lengths = doc_lengths(store)
    assert {k[0] for k in got} == set(lengths)
    for (doc_id, _), spans in got.items():
        assert_tiles(spans, lengths[doc_id])
    for rank in per_rank:
        assert all(b["input_ids"].shape == (rows, seq_len) for b in rank)
    # The worker count does not change what a rank sees, nor in which order.
    if workers > 1:
        alone = consume(store, world, 1, seq_len=seq_len, micro_batch_rows=rows, seed=seed,
                        buffer_docs=16)
        assert [[batch_key(b) for b in r] for r in alone] == \
            [[batch_key(b) for b in r] for r in per_rank]


def test_padding_batches_equalise_ranks_without_segments(make_token_store):
    store = make_token_store({"a": (3, 20)})
    per_rank = consume(store, 4, 1, seq_len=64, micro_batch_rows=1)
    assert [len(r) for r in per_rank] == [1, 1, 1, 1]
    padding = [b for r in per_rank for b in r if not b["segments"]]
    assert padding, "4 ranks over fewer rows need all-padding batches"
    for b in padding:
        assert (b["labels"] == IGNORE_INDEX).all() and b["num_tokens"] == 0


def test_copies_from_selection_weights(make_token_store):
    weights = {"a": [2.0] * 10 + [0.5] * 40 + [0.0] * 10}
    store = make_token_store({"a": (60, 30)}, weights=weights)
    s = stream(store, num_epochs=2)
    per_epoch = [Counter(), Counter()]
    for batch in s:
        for seg in batch["segments"]:
            if seg["start"] == 0:
                per_epoch[batch["epoch"]][seg["doc_id"]] += 1
    for counts in per_epoch:
        assert all(counts[f"a-{i}"] == 2 for i in range(10))
        assert all(counts[f"a-{i}"] in (0, 1) for i in range(10, 50))
        assert all(counts[f"a-{i}"] == 0 for i in range(50, 60))
        assert 8 <= sum(counts[f"a-{i}"] for i in range(10, 50)) <= 32
    half = [{d for d, c in counts.items() if int(d.split("-")[1]) >= 10} for counts in per_epoch]
    assert half[0] != half[1], "fractional copies must be redrawn each epoch"
    again = stream(store, num_epochs=2)
    assert [batch_key(b) for b in again] == [batch_key(b) for b in stream(store, num_epochs=2)]


def test_resume_at_any_step_natural_two_epochs(token_store, check_resumable):
    n = check_resumable(lambda: stream(token_store, num_epochs=2), [0, 1, 7, 30, 10**6])
    assert n > 30


def test_resume_weighted_schedule_across_the_switch(token_store, check_resumable):
    schedule = Schedule.upsample_at_end({"web": 0.8, "code": 0.15, "math": 0.05},
                                        {"web": 0.3, "code": 0.3, "math": 0.4},
                                        total=60_000, fraction=0.2)
    make = lambda: stream(token_store, schedule=schedule, num_epochs=1)  # noqa: E731
    n = sum(1 for _ in make())
    switch_batch = int(n * 0.8)
    check_resumable(make, [switch_batch - 1, switch_batch, switch_batch + 1, 3])


def test_resume_rs2_mid_epoch(token_store, check_resumable):
    check_resumable(lambda: stream(token_store, rs2_fraction=0.25, num_epochs=3), [2, 11, 25])


def test_state_dict_mismatch_names_the_field(token_store):
    state = stream(token_store).state_dict()
    with pytest.raises(ConfigError, match="`seq_len` was 256"):
        stream(token_store, seq_len=128).load_state_dict(state)
    with pytest.raises(ConfigError, match="`seed`"):
        stream(token_store, seed=3).load_state_dict(state)
    with pytest.raises(ConfigError, match="`mixture`"):
        stream(token_store, weights={"web": 1.0}).load_state_dict(state)
    live = stream(token_store, rank=0, world_size=2, worker_id=0, num_workers=2)
    next(iter(live))
    other = stream(token_store, rank=0, world_size=4, worker_id=0, num_workers=2)
    other.load_state_dict(live.state_dict())
    with pytest.raises(ConfigError, match="`world_size` differs"):
        next(iter(other))
    wrong_rank = stream(token_store, rank=1, world_size=2)
    plain = stream(token_store, rank=0, world_size=2)
    next(iter(plain))
    wrong_rank.load_state_dict(plain.state_dict())
    with pytest.raises(ConfigError, match="`rank` differs"):
        next(iter(wrong_rank))


@pytest.mark.parametrize(("old", "new", "steps"), [(2, 3, 4), (3, 1, 5), (4, 2, 1)])
def test_resume_on_another_world_size_keeps_exactly_once(token_store, old, new, steps):
    """Ranks of the old world run `steps` steps in lockstep; one rank's state resumes on `new`
    ranks, and the union of all delivered segments is still every token exactly once."""
    before = []
    for rank in range(old):
        it = iter(stream(token_store, rank=rank, world_size=old))
        before += [next(it) for _ in range(steps)]
    saver = stream(token_store, rank=old - 1, world_size=old)
    it = iter(saver)
    for _ in range(steps):
        next(it)
    state = saver.state_dict()
    after = []
    for rank in range(new):
        resumed = stream(token_store, rank=rank, world_size=new)
        resumed.load_state_dict(state)
        after.append(list(resumed))
    assert len({len(a) for a in after}) == 1, "new ranks run different numbers of steps"
    got = delivered(before + [b for a in after for b in a])
    lengths = doc_lengths(token_store)
    assert {k[0] for k in got} == set(lengths)
    for (doc_id, _), spans in got.items():
        assert_tiles(spans, lengths[doc_id])


@pytest.mark.parametrize(("weights", "target"), [
    ({"web": 0.5, "code": 0.3, "math": 0.2}, {"web": 0.5, "code": 0.3, "math": 0.2}),
    ({"web": {"proportion": 1.0}, "math": {"repeat": 3}}, None),
])
def test_domain_token_fractions_track_the_weights(token_store, weights, target):
    ts = TokenStore.open(token_store)
    if target is None:  # math x3 on top of an epoch's worth of web
        math = 3 * ts.domains["math"].num_tokens
        total = ts.num_tokens + math
        target = {"web": ts.num_tokens / total, "code": 0.0, "math": math / total}
    s = stream(token_store, weights=weights, epoch_tokens=None if "code" not in weights
               else 200_000, num_epochs=1)
    counts: Counter[str] = Counter()
    for batch in s:
        for seg in batch["segments"]:
            counts[seg["domain"]] += seg["end"] - seg["start"]
    total = sum(counts.values())
    for domain, want in target.items():
        assert counts[domain] / total == pytest.approx(want, abs=0.01), counts
    stats = s.stats()["domains"]
    assert stats["math"]["source_epoch"] >= 2, "math must have been repeated"


def test_temperature_alpha_zero_is_uniform_over_domains(token_store):
    counts: Counter[str] = Counter()
    for batch in stream(token_store, alpha=0.0, epoch_tokens=90_000):
        for seg in batch["segments"]:
            counts[seg["domain"]] += seg["end"] - seg["start"]
    total = sum(counts.values())
    assert all(c / total == pytest.approx(1 / 3, abs=0.01) for c in counts.values())


def test_schedule_switches_at_its_boundary_and_constant_equals_weights(token_store):
    base, up = {"web": 1.0, "code": 0.0, "math": 0.0}, {"web": 0.0, "code": 0.0, "math": 1.0}
    schedule = Schedule.upsample_at_end(base, up, total=40_000, fraction=0.25)
    assert schedule.switch_tokens == 30_000
    consumed, first_math = 0, None
    seen_docs = Counter()
    for batch in stream(token_store, schedule=schedule):
        for seg in sorted(batch["segments"], key=lambda s: s["row"]):
            if seg["domain"] == "math" and first_math is None:
                first_math = consumed
            consumed += seg["end"] - seg["start"]
            if seg["start"] == 0:
                seen_docs[(seg["doc_id"], seg["copy"])] += 1
    # Rows are shuffled within a packing round, so the first math token shows up within a
    # buffer's worth of tokens of the switch, never long before it.
    assert first_math is not None and first_math >= 30_000 - 64 * 256
    web_docs = [k for k in seen_docs if k[0].startswith("web")]
    assert all(seen_docs[k] == 1 for k in web_docs), "the switch repeated a web document"
    weights = {"web": 0.6, "code": 0.3, "math": 0.1}
    a = [batch_key(b) for b in stream(token_store, weights=weights, epoch_tokens=50_000)]
    b = [batch_key(b) for b in stream(token_store, schedule=Schedule.constant(weights, 50_000))]
    assert a == b


def test_schedule_must_cover_the_total():
    with pytest.raises(ConfigError, match="gap at token 100..200"):
        Schedule([(0, 100, {"a": 1.0}), (200, 300, {"a": 1.0})])
    with pytest.raises(ConfigError, match=r"does not cover \[0, 500\]"):
        Schedule([(0, 100, {"a": 1.0})], total=500)
    with pytest.raises(ConfigError, match="zero weight"):
        Schedule([(0, 100, {"a": 0.0})])


def test_rs2_fresh_subsets_without_replacement(make_token_store):
    store = make_token_store({"a": (40, 20), "b": (20, 20)})
    s = stream(store, rs2_fraction=0.25, num_epochs=4)
    per_epoch = defaultdict(set)
    for batch in s:
        for seg in batch["segments"]:
            per_epoch[batch["epoch"]].add(seg["doc_id"])
    assert sorted(per_epoch) == [0, 1, 2, 3]
    for docs in per_epoch.values():
        assert sum(d.startswith("a") for d in docs) == 10
        assert sum(d.startswith("b") for d in docs) == 5
    union = set().union(*per_epoch.values())
    assert len(union) == 60, "over 1/r epochs every document is seen exactly once"


def test_set_epoch_matches_the_continuous_run(token_store):
    both = [batch_key(b) for b in stream(token_store, num_epochs=2)]
    first = sum(1 for _ in stream(token_store))
    s = stream(token_store)
    s.set_epoch(1)
    assert [batch_key(b) for b in s] == both[first:]
    again = stream(token_store, weights={"web": 0.5, "math": 0.5}, epoch_tokens=20_000,
                   num_epochs=2)
    run = [batch_key(b) for b in again]
    n0 = sum(1 for _ in stream(token_store, weights={"web": 0.5, "math": 0.5},
                               epoch_tokens=20_000))
    jumped = stream(token_store, weights={"web": 0.5, "math": 0.5}, epoch_tokens=20_000)
    jumped.set_epoch(1)
    assert [batch_key(b) for b in jumped] == run[n0:]


def test_next_iter_continues_with_the_next_epoch(token_store):
    both = [batch_key(b) for b in stream(token_store, num_epochs=2)]
    s = stream(token_store)
    first = [batch_key(b) for b in s]
    second = [batch_key(b) for b in s]
    assert first + second == both


def test_efficiency_at_2048_is_at_least_99_percent(make_token_store):
    store = make_token_store({"a": (3000, 250), "b": (500, 1500)})
    s = GristmillStream(store, seq_len=2048, micro_batch_rows=8, num_epochs=1)
    real = rows = 0
    for batch in s:
        real += batch["num_tokens"]
        rows += sum(1 for r in range(8) if (batch["segment_ids"][r] >= 0).any())
    assert real / (rows * 2048) >= 0.99


def test_dataloader_with_two_workers_matches_in_process(token_store):
    inproc = [batch_key(b) for b in stream(token_store)]
    loader = DataLoader(stream(token_store), batch_size=None, num_workers=2)
    assert [batch_key(b) for b in loader] == inproc


def test_stateful_dataloader_resumes_with_two_workers(token_store):
    stateful = pytest.importorskip("torchdata.stateful_dataloader")
    full = [batch_key(b) for b in stream(token_store)]
    loader = stateful.StatefulDataLoader(stream(token_store), batch_size=None, num_workers=2)
    it = iter(loader)
    head = [batch_key(next(it)) for _ in range(5)]
    state = loader.state_dict()
    del it
    fresh = stateful.StatefulDataLoader(stream(token_store), batch_size=None, num_workers=2)
    fresh.load_state_dict(state)
    rest = [batch_key(b) for b in fresh]
    assert head + rest == full


def test_bad_input(token_store, make_token_store, tmp_path):
    with pytest.raises(ConfigError, match="`seq_len` must be >= 2"):
        stream(token_store, seq_len=1)
    with pytest.raises(ConfigError, match="finite and >= 0"):
        stream(token_store, weights={"web": -1.0})
    with pytest.raises(ConfigError, match="weights are all zero"):
        stream(token_store, weights={"web": 0.0, "code": 0.0})
    with pytest.raises(ConfigError, match="not in the stores"):
        stream(token_store, weights={"nope": 1.0})
    with pytest.raises(ConfigError, match="pass both `rank` and `world_size`"):
        stream(token_store, rank=0)
    with pytest.raises(ConfigError, match="unknown packer"):
        stream(token_store, packer="nfd")
    other_tok = {"name": "other", "vocab_size": 500, "pad_id": 1, "fingerprint": "other-500"}
    other = make_token_store({"x": (5, 10)}, tokenizer=other_tok)
    with pytest.raises(ConfigError, match="different tokenizers"):
        GristmillStream([token_store, other], seq_len=64, micro_batch_rows=1)
    # A token id >= vocab: patch one id in the tokens file; the error names store and doc.
    bad = make_token_store({"z": (4, 10)})
    tokens = TokenStore.open(bad).domains["z"]
    raw = np.memmap(tokens.path / "tokens.bin", dtype="<u4", mode="r+")
    raw[int(tokens.offsets[2])] = VOCAB + 5
    raw.flush()
    del raw
    with pytest.raises(InputError, match=r"domain 'z' document 'z-2'.*>= the tokenizer's vocab"):
        list(stream(bad, seq_len=64, micro_batch_rows=1))


def test_multiple_stores_merge_domains(make_token_store):
    a = make_token_store({"web": (10, 30), "code": (5, 30)}, seed=1)
    b = make_token_store({"web": (7, 30)}, seed=2)
    s = GristmillStream([a, b], seq_len=64, micro_batch_rows=2, num_epochs=1)
    assert [src.name for src in s.sources] == ["code", "web"]
    starts = Counter(seg["domain"] for batch in s for seg in batch["segments"]
                     if seg["start"] == 0)
    assert starts == {"web": 17, "code": 5}
