"""ProxyLM: sizes, the HF shift, attention confined to documents, padding without NaN."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from train_corpus import VOCAB, pattern_docs

from gristmill.errors import ConfigError
from gristmill.samplers import GristmillStream
from gristmill.train import ProxyConfig, ProxyLM
from gristmill.train.model import document_mask, varlen_boundaries


def packed_row(doc_a: list[int], doc_b: list[int], pad: int = 4) -> dict[str, torch.Tensor]:
    """One row: document A, document B, then padding (GristmillStream's layout)."""
    ids = torch.tensor([doc_a + doc_b + [1] * pad])
    pos = torch.tensor([list(range(len(doc_a))) + list(range(len(doc_b))) + list(range(pad))])
    seg = torch.tensor([[0] * len(doc_a) + [1] * len(doc_b) + [-1] * pad])
    labels = ids.clone()
    labels[(pos == 0) | (seg < 0)] = -100
    return {"input_ids": ids, "position_ids": pos, "segment_ids": seg, "labels": labels}


def logits_of(model: ProxyLM, row: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(row["input_ids"], row["position_ids"], row["segment_ids"]).logits[0]


@pytest.fixture
def model(tiny_config) -> ProxyLM:
    torch.manual_seed(0)
    return ProxyLM(tiny_config).eval()


def test_presets_have_the_documented_sizes():
    cpu, gpu = ProxyConfig.cpu(8192), ProxyConfig.gpu(32000)
    assert 1_000_000 <= cpu.num_params() <= 10_000_000  # 1.84M
    assert 50_000_000 <= gpu.num_params() <= 150_000_000  # 109.6M
    assert cpu.num_params() == sum(p.numel() for p in ProxyLM(cpu).parameters())
    assert ProxyConfig.cpu(100, n_layers=1).n_layers == 1


def test_embeddings_are_tied(model):
    row = packed_row([5, 6, 7], [8, 9])
    before = logits_of(model, row)
    assert before.shape == (9, VOCAB)
    with torch.no_grad():
        model.embed.weight[33] += torch.linspace(-1, 1, model.config.d_model)  # absent token
    after = logits_of(model, row)
    changed = (after - before).abs().amax(0) > 1e-6
    assert changed.nonzero().flatten().tolist() == [33]


@pytest.mark.parametrize(("field", "value"), [("d_model", 30), ("n_heads", 0),
                                              ("dropout", 1.0), ("attention", "xformers")])
def test_bad_config_is_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        ProxyConfig(**{"vocab_size": 64, "d_model": 32, "n_heads": 2, field: value})


def test_loss_is_shifted_sum_over_label_tokens(model):
    row = packed_row([5, 6, 7, 8, 9], [10, 11, 12])
    with torch.no_grad():
        out = model(row["input_ids"], row["position_ids"], row["segment_ids"],
                    labels=row["labels"])
    logits, labels = out.logits[0], row["labels"][0]
    expected = sum(F.cross_entropy(logits[t], labels[t + 1], reduction="sum")
                   for t in range(len(labels) - 1) if labels[t + 1] != -100)
    assert out.label_tokens == 4 + 2  # first tokens and padding predict nothing
    assert out.loss_sum.item() == pytest.approx(float(expected), rel=1e-5)


def test_attention_does_not_cross_documents(model):
    doc_a, doc_b = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [20, 21, 22, 23, 24, 25, 26, 27]
    base = logits_of(model, packed_row(doc_a, doc_b))
    b = slice(len(doc_a), len(doc_a) + len(doc_b))
    # Another first document (other tokens, and longer) leaves B's logits as they were.
    other = logits_of(model, packed_row([40, 41, 42, 43, 44, 45, 46, 47, 48, 49], doc_b))
    torch.testing.assert_close(other[b], base[b], atol=1e-5, rtol=0)
    longer = logits_of(model, packed_row(doc_a + [30, 31, 32], doc_b, pad=1))
    torch.testing.assert_close(longer[len(doc_a) + 3:len(doc_a) + 3 + len(doc_b)], base[b],
                               atol=1e-5, rtol=0)
    # B packed after A equals B alone at the start of a row (positions restart per document).
    alone = logits_of(model, packed_row(doc_b, [60], pad=len(doc_a) + 3))
    torch.testing.assert_close(alone[:len(doc_b)], base[b], atol=1e-5, rtol=0)
    # An earlier token of B itself does change B's later logits, and only those.
    edited = logits_of(model, packed_row(doc_a, [20, 21, 50, 23, 24, 25, 26, 27]))
    start = len(doc_a)
    torch.testing.assert_close(edited[start:start + 2], base[start:start + 2], atol=1e-6,
                               rtol=0)
    assert (edited[start + 2:b.stop] - base[start + 2:b.stop]).abs().amax(-1).min() > 1e-3


def test_padding_rows_give_finite_loss_and_gradients(model):
    row = packed_row([5, 6, 7], [8, 9, 10], pad=10)
    pad_row = {"input_ids": torch.ones(1, 16, dtype=torch.long),
               "position_ids": torch.arange(16)[None], "segment_ids": torch.full((1, 16), -1),
               "labels": torch.full((1, 16), -100)}
    batch = {k: torch.cat([row[k], pad_row[k]]) for k in row}
    model.train()
    out = model(batch["input_ids"], batch["position_ids"], batch["segment_ids"],
                labels=batch["labels"])
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss_sum)
    (out.loss_sum / out.label_tokens).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    empty = model(pad_row["input_ids"], pad_row["position_ids"], pad_row["segment_ids"],
                  labels=pad_row["labels"])
    assert empty.label_tokens == 0 and empty.loss_sum.item() == 0.0
    assert torch.isfinite(empty.logits).all()


def test_masks_and_boundaries_agree_with_the_stream(make_store):
    store = make_store({"web": pattern_docs(30), "code": pattern_docs(10, first=30)})
    stream = GristmillStream(store, seq_len=64, micro_batch_rows=4, num_epochs=1, seed=0)
    for batch in stream:
        pos, seg = batch["position_ids"], batch["segment_ids"]
        cu, longest = varlen_boundaries(pos, seg)
        assert torch.equal(cu, batch["cu_seqlens"]) and longest == batch["max_seqlen"]
        mask = document_mask(pos, seg)[:, 0]
        # Query i sees key j iff same segment, j <= i; padding sees itself only.
        for r in range(seg.shape[0]):
            same = (seg[r][:, None] == seg[r][None, :]) & (seg[r][:, None] >= 0)
            expected = torch.tril(same) | torch.eye(seg.shape[1], dtype=torch.bool)
            assert torch.equal(mask[r], expected)


def test_longer_rows_than_max_seq_len_are_refused(model):
    ids = torch.zeros(1, 200, dtype=torch.long)
    with pytest.raises(ConfigError, match="max_seq_len"):
        model(ids, torch.arange(200)[None], torch.zeros_like(ids))
