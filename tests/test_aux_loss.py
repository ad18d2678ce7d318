"""Text4Point auxiliary loss (Eq. 15-16) and its pseudo labels, against brute-force references."""
import math
from collections import Counter

import numpy as np
import pytest
import torch

from text4point.aux_loss import auxiliary_loss, pseudo_labels


def brute_force_labels(q, qb, p, pb, lab, radius, ignore=-1):
    out = []
    for i in range(len(q)):
        votes = Counter(int(lab[j]) for j in range(len(p))
                        if pb[j] == qb[i] and lab[j] != ignore and np.linalg.norm(q[i] - p[j]) <= radius)
        if not votes:
            out.append(ignore)
            continue
        best = max(votes.values())
        out.append(min(k for k, v in votes.items() if v == best))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_pseudo_labels_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_points, n_queries = 300, 120
    # integer coordinates (metres): exact distances, so points exactly at the radius and equal counts (ties) occur
    p = rng.integers(0, 6, (n_points, 3)).astype(np.float64)
    q = rng.integers(-2, 8, (n_queries, 3)).astype(np.float64)  # some queries far outside: no neighbour
    pb = rng.integers(0, 3, n_points)
    qb = rng.integers(0, 4, n_queries)                          # batch item 3 has no points at all
    lab = rng.integers(-1, 4, n_points)                         # -1 = ignored
    radius = (1.0, 1.5, 2.0, 3.0)[seed]
    got = pseudo_labels(torch.tensor(q, dtype=torch.float32), torch.tensor(qb), torch.tensor(p, dtype=torch.float32),
                        torch.tensor(pb), torch.tensor(lab), radius=radius)
    want = brute_force_labels(q, qb, p, pb, lab, radius)
    assert got.dtype == torch.int64 and got.shape == (n_queries,)
    assert got.tolist() == want
    assert (got == -1).any() and (got >= 0).any()


def test_pseudo_labels_ties_ignored_and_boundary():
    # query 0: labels 2, 2, 1, 1 within 0.5 m (tie -> 1); query 1: only ignored (7) points; query 2: item 1 only
    p = torch.tensor([[0.0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [2, 2, 2], [2.1, 2, 2], [2, 2.1, 2],
                      [5.0, 5, 5], [5, 5, 5]])
    lab = torch.tensor([2, 2, 1, 1, 7, 7, 7, 3, 4])
    pb = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 1])
    q = torch.tensor([[0.0, 0, 0], [2.0, 2, 2], [5.0, 5, 5.5]])
    qb = torch.tensor([0, 0, 1])
    got = pseudo_labels(q, qb, p, pb, lab, radius=0.5, ignore_index=7)
    assert got.tolist() == [1, 7, 4]  # exactly 0.5 m away counts as a neighbour
    assert pseudo_labels(q, qb, p, pb, lab, radius=0.49, ignore_index=7).tolist() == [2, 7, 7]


def test_pseudo_labels_empty_and_bad_input():
    q = torch.zeros(2, 3)
    got = pseudo_labels(q, torch.zeros(2, dtype=torch.long), torch.zeros(0, 3), torch.zeros(0, dtype=torch.long),
                        torch.zeros(0, dtype=torch.long), radius=1.0)
    assert got.tolist() == [-1, -1]
    with pytest.raises(ValueError, match="point_xyz"):
        pseudo_labels(q, torch.zeros(2, dtype=torch.long), torch.zeros(4, 2), torch.zeros(4, dtype=torch.long),
                      torch.zeros(4, dtype=torch.long), radius=1.0)
    with pytest.raises(ValueError, match="length mismatch"):
        pseudo_labels(q, torch.zeros(3, dtype=torch.long), torch.zeros(4, 3), torch.zeros(4, dtype=torch.long),
                      torch.zeros(4, dtype=torch.long), radius=1.0)
    with pytest.raises(ValueError, match="radius"):
        pseudo_labels(q, torch.zeros(2, dtype=torch.long), torch.zeros(4, 3), torch.zeros(4, dtype=torch.long),
                      torch.zeros(4, dtype=torch.long), radius=0.0)
    with pytest.raises(ValueError, match="integer"):
        pseudo_labels(q, torch.zeros(2, dtype=torch.long), torch.zeros(4, 3), torch.zeros(4, dtype=torch.long),
                      torch.zeros(4), radius=1.0)


def naive_aux_loss(h, text, labels, tau, ignore=-1):
    terms = []
    for i in range(h.shape[0]):
        if labels[i] == ignore:
            continue
        s = [float(h[i] @ text[j]) / (float(h[i].norm()) * float(text[j].norm())) for j in range(text.shape[0])]
        z = sum(math.exp(v / tau) for v in s)
        terms.append(-math.log(math.exp(s[int(labels[i])] / tau) / z))
    return sum(terms) / len(terms)


def test_auxiliary_loss_matches_naive_loop():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(40, 16, generator=g, dtype=torch.float64) * 3
    text = torch.randn(5, 16, generator=g, dtype=torch.float64)
    labels = torch.randint(-1, 5, (40,), generator=g)
    for tau in (0.07, 1.0):
        got = auxiliary_loss(h, text, labels, temperature=tau)
        assert got.ndim == 0
        assert got.item() == pytest.approx(naive_aux_loss(h, text, labels, tau), rel=1e-9)
    # custom ignore index; float32 inputs are computed in float32
    labels255 = torch.where(labels < 0, 255, labels)
    got = auxiliary_loss(h.float(), text.float(), labels255, ignore_index=255)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(naive_aux_loss(h, text, labels255, 0.07, ignore=255), rel=1e-5)


def test_auxiliary_loss_no_labels_is_zero_with_graph():
    h = torch.randn(6, 8, requires_grad=True)
    text = torch.randn(3, 8, requires_grad=True)
    loss = auxiliary_loss(h, text, torch.full((6,), -1))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.count_nonzero(h.grad) == 0 and torch.count_nonzero(text.grad) == 0
    empty = auxiliary_loss(h[:0], text, torch.zeros(0, dtype=torch.long))
    assert empty.item() == 0.0 and empty.requires_grad


def test_auxiliary_loss_gradients_and_bad_input():
    h = torch.randn(6, 8, requires_grad=True)
    text = torch.randn(3, 8, requires_grad=True)
    labels = torch.tensor([0, 1, 2, -1, 1, 0])
    auxiliary_loss(h, text, labels).backward()
    assert h.grad[3].abs().sum() == 0 and h.grad[[0, 1, 2, 4, 5]].abs().sum() > 0 and text.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="labels must be in"):
        auxiliary_loss(h, text, torch.tensor([0, 1, 3, -1, 1, 0]))
    with pytest.raises(ValueError, match="same d"):
        auxiliary_loss(h, text[:, :4], labels)
    with pytest.raises(ValueError, match="integer"):
        auxiliary_loss(h, text, labels.float())
    with pytest.raises(ValueError, match="temperature"):
        auxiliary_loss(h, text, labels, temperature=0.0)
