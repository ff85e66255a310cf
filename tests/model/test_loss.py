import math

import pytest
import torch
import torch.nn.functional as F

from guie.model.loss import SubCenterArcFace, dynamic_margins


def test_dynamic_margins_follow_the_glr2020_formula():
    counts = [1, 16, 81, 3]
    m = dynamic_margins(counts, 0.05, 0.5)
    t = torch.tensor(counts, dtype=torch.float64) ** -0.25
    expected = (t - t.min()) / (t.max() - t.min()) * 0.45 + 0.05
    torch.testing.assert_close(m, expected.float())
    assert m[0] == pytest.approx(0.5)  # rarest
    assert m[2] == pytest.approx(0.05)  # commonest


def test_equal_counts_get_the_midpoint_margin():
    assert torch.allclose(dynamic_margins([6, 6, 6], 0.05, 0.5), torch.full((3,), 0.275))


def test_zero_count_is_rejected():
    with pytest.raises(ValueError):
        dynamic_margins([0, 3], 0.05, 0.5)


def _reference_loss(loss: SubCenterArcFace, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A plain loop over samples and classes."""
    w = F.normalize(loss.weight.detach().double())
    rows = []
    for i in range(x.shape[0]):
        e = F.normalize(x[i].double(), dim=0)
        logits = []
        for c in range(loss.num_classes):
            cos = max(float(e @ w[c * loss.subcenters + j]) for j in range(loss.subcenters))
            cos = min(max(cos, -1 + 1e-7), 1 - 1e-7)
            if c == int(labels[i]):
                m = float(loss.margins[c])
                theta = math.acos(cos)
                cos = math.cos(theta + m) if theta + m < math.pi else cos - math.sin(math.pi - m) * m
            logits.append(cos * loss.scale)
        rows.append(logits)
    return F.cross_entropy(torch.tensor(rows, dtype=torch.float64), labels)


@pytest.mark.parametrize("subcenters", [1, 3])
def test_vectorised_loss_matches_a_reference_loop(subcenters):
    torch.manual_seed(0)
    margins = dynamic_margins([1, 2, 5, 9, 30], 0.05, 0.5)
    loss = SubCenterArcFace(8, margins, subcenters=subcenters, scale=30.0)
    x = torch.randn(12, 8)
    labels = torch.randint(0, 5, (12,))
    labels[0] = 0  # the rarest class, big margin: exercises the theta + m > pi fallback sometimes
    got = loss(x, labels).double()
    torch.testing.assert_close(got, _reference_loss(loss, x, labels), rtol=1e-4, atol=1e-4)


def test_loss_decreases_when_trained():
    torch.manual_seed(0)
    loss = SubCenterArcFace(16, dynamic_margins([4] * 6, 0.05, 0.5), subcenters=3)
    x = torch.randn(24, 16, requires_grad=True)
    labels = torch.arange(24) % 6
    opt = torch.optim.Adam([x, *loss.parameters()], lr=0.05)
    first = loss(x, labels).item()
    for _ in range(50):
        opt.zero_grad()
        value = loss(x, labels)
        value.backward()
        opt.step()
    assert value.item() < first * 0.5
