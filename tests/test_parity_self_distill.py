"""The self-distillation parity module's own logic (benchmarks/parity/self_distill.py): its transcription of the
paper's equations, checked by hand, and the identity its teacher comparison rests on (AT-BSL on equal class
counts is PGD-AT: the balanced softmax on a balanced set is CE)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from benchmarks.parity.self_distill import _eq1_bsl, _kl_rows, _paper_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def test_eq1_transcription_by_hand():
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([0, 0])
    counts, tau = [4, 1], 0.5  # b = (0.5 log 4, 0) = (log 2, 0)
    rows = [-math.log(math.exp(1 + math.log(2)) / (math.exp(1 + math.log(2)) + 1)),
            -math.log(math.exp(math.log(2)) / (math.exp(math.log(2)) + math.exp(2)))]
    assert abs(_eq1_bsl(z, y, counts, tau).item() - sum(rows) / 2) < 1e-15


def test_kl_rows_by_hand_and_zero_on_equal_logits():
    p, q = torch.tensor([[0.0, 1.0]], dtype=torch.float64), torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    a = math.exp(1) / (1 + math.exp(1))
    want = a * math.log(a / (1 - a)) + (1 - a) * math.log((1 - a) / a)
    assert abs(_kl_rows(p, q).item() - want) < 1e-15
    assert _kl_rows(p, p).item() == 0.0


def test_paper_loss_without_distillation_is_eq1_and_bsl_on_equal_counts_is_ce():
    torch.manual_seed(0)
    s = torch.nn.Linear(3, 4).double()
    x = torch.rand(5, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0])
    got = _paper_loss(s, s, x, x + 0.01, y, [9, 5, 3, 1], 1.0, alpha=0.0, lam=10.0)
    assert torch.allclose(got, _eq1_bsl(s(x + 0.01), y, [9, 5, 3, 1], 1.0), rtol=0, atol=1e-15)
    z = s(x)
    assert torch.allclose(_eq1_bsl(z, y, [7, 7, 7, 7], 1.0), F.cross_entropy(z, y), rtol=0, atol=1e-14)
    # the teacher equal to the student: both KL terms vanish, whatever alpha and lambda
    assert torch.allclose(_paper_loss(s, s, x, x + 0.01, y, [9, 5, 3, 1], 1.0, alpha=3.0, lam=10.0), got,
                          rtol=0, atol=1e-14)
