"""Pooling modes on hand-checkable tensors, and the token-budget batch plan."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gristmill.embed.batching import TokenizedTexts, collate, plan_batches
from gristmill.embed.pooling import POOLINGS, pool
from gristmill.errors import ConfigError

# Two documents, hidden size 2: doc 0 has 3 real tokens, doc 1 has 2 real tokens + 1 pad whose
# state is huge, so any leak of padding into a pooled vector shows.
HIDDEN = torch.tensor([[[1.0, 0.0], [2.0, 4.0], [3.0, 8.0]],
                       [[5.0, 1.0], [7.0, 3.0], [1000.0, -1000.0]]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


@pytest.mark.parametrize(("mode", "expected"), [
    ("mean", [[2.0, 4.0], [6.0, 2.0]]),
    ("cls", [[1.0, 0.0], [5.0, 1.0]]),
    ("last", [[3.0, 8.0], [7.0, 3.0]]),
    # weights t / sum(1..L): doc 0 (1,2,3)/6, doc 1 (1,2)/3
    ("weighted-mean", [[(1 + 4 + 9) / 6, (0 + 8 + 24) / 6], [(5 + 14) / 3, (1 + 6) / 3]]),
    ("max", [[3.0, 8.0], [7.0, 3.0]]),
])
def test_each_pooling_mode_on_a_hand_checked_case(mode, expected):
    assert torch.allclose(pool(mode, HIDDEN, MASK), torch.tensor(expected))


@pytest.mark.parametrize("mode", list(POOLINGS))
def test_pooling_ignores_padding_so_batching_cannot_change_a_vector(mode):
    alone = pool(mode, HIDDEN[1:, :2], MASK[1:, :2])
    assert torch.allclose(pool(mode, HIDDEN, MASK)[1:], alone)


def test_weighted_mean_of_equal_states_is_that_state_and_weights_sum_to_one():
    # ALGORITHMS.md 4.5 property 1 (before normalisation): all states h -> e = h.
    hidden = torch.tensor([[0.3, -0.4]]).repeat(1, 7, 1)
    mask = torch.tensor([[1] * 5 + [0] * 2])
    assert torch.allclose(pool("weighted-mean", hidden, mask), torch.tensor([[0.3, -0.4]]))


def test_unknown_pooling_names_the_valid_modes():
    with pytest.raises(ConfigError, match="weighted-mean"):
        pool("median", HIDDEN, MASK)


def tokens_of(lengths: list[int]) -> TokenizedTexts:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.arange(offsets[-1], dtype=np.int64) + 100
    return TokenizedTexts(ids, offsets, np.zeros(len(lengths), dtype=bool))


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(1, 300), min_size=1, max_size=200),
       budget=st.integers(1, 4096))
def test_batch_plan_covers_every_row_once_within_the_budget(lengths, budget):
    lengths_array = np.array(lengths)
    batches = plan_batches(lengths_array, budget)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * lengths_array[batch].max() <= budget
    assert [b.tolist() for b in plan_batches(lengths_array, budget)] == \
        [b.tolist() for b in batches]


def test_batch_plan_sorts_longest_first_and_packs_short_rows_wide():
    batches = plan_batches(np.array([5, 100, 5, 50, 5, 100]), 200)
    assert [b.tolist() for b in batches] == [[1, 5], [3, 0, 2, 4]]


def test_collate_right_pads_and_masks():
    ids, mask = collate(tokens_of([2, 3, 1]), np.array([1, 2]), pad_id=0)
    assert ids.tolist() == [[102, 103, 104], [105, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
