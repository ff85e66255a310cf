import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import TypeAdapter, ValidationError

from guie.model.loss import MarginLoss, build_margin_loss, class_margins, dynamic_margins
from guie.params.loss import LossParams

COUNTS = [1, 2, 5, 9, 30]  # class 0 is the rarest: the biggest dynamic margin


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


def _reference_loss(loss: MarginLoss, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A plain loop over samples and classes, in float64, straight from the papers' formulas."""
    w = F.normalize(loss.weight.detach().double())
    rows = []
    for i in range(x.shape[0]):
        e = F.normalize(x[i].double(), dim=0)
        logits = []
        for c in range(loss.num_classes):
            cos = max(float(e @ w[c * loss.subcenters + j]) for j in range(loss.subcenters))
            if c == int(labels[i]):
                m = float(loss.margins[c])
                if loss.kind == "arcface":
                    cos = min(max(cos, -1 + 1e-7), 1 - 1e-7)
                    theta = math.acos(cos)
                    cos = math.cos(theta + m) if theta + m < math.pi else cos - math.sin(math.pi - m) * m
                else:
                    cos = cos - m
            elif loss.kind == "arcface":
                cos = min(max(cos, -1 + 1e-7), 1 - 1e-7)
            logits.append(cos * loss.scale)
        rows.append(logits)
    return F.cross_entropy(torch.tensor(rows, dtype=torch.float64), labels)


def _batch(loss: MarginLoss, n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Random embeddings; sample 0 points away from every sub-centre of class 0 (its label), so theta
    is ~pi and ArcFace's theta + m > pi fallback is certainly taken."""
    x = torch.randn(n, loss.weight.shape[1])
    labels = torch.randint(0, loss.num_classes, (n,))
    with torch.no_grad():
        loss.weight[: loss.subcenters] = loss.weight[0]
    x[0], labels[0] = -loss.weight[0].detach(), 0
    return x, labels


MARGINS = {"dynamic": lambda: dynamic_margins(COUNTS, 0.05, 0.5), "fixed": lambda: torch.full((5,), 0.35)}


@pytest.mark.parametrize("margins", MARGINS)
@pytest.mark.parametrize("subcenters", [1, 3])
@pytest.mark.parametrize("kind", ["arcface", "cosface"])
def test_vectorised_loss_matches_a_reference_loop(kind, subcenters, margins):
    torch.manual_seed(0)
    loss = MarginLoss(8, MARGINS[margins](), subcenters=subcenters, scale=30.0, kind=kind)
    x, labels = _batch(loss)
    got = loss(x, labels).double()
    torch.testing.assert_close(got, _reference_loss(loss, x, labels), rtol=1e-4, atol=1e-4)


def _first_release_loss(
    weight: torch.Tensor, margins: torch.Tensor, subcenters: int, scale: float, x: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Frozen copy of SubCenterArcFace.forward as committed outputs were made with it. Never edit: it
    pins the ArcFace default, whose outputs are committed byte for byte."""
    num_classes = int(margins.numel())
    with torch.autocast(x.device.type, enabled=False):
        embeddings = x.float()
        cos = F.linear(F.normalize(embeddings), F.normalize(weight))
        cos = cos.view(-1, num_classes, subcenters).amax(dim=2)
        cos = cos.clamp(-1.0 + 1e-7, 1.0 - 1e-7)
        m = margins[labels]
        target = cos.gather(1, labels[:, None]).squeeze(1)
        sin = torch.sqrt(1.0 - target * target)
        phi = target * torch.cos(m) - sin * torch.sin(m)
        phi = torch.where(target > torch.cos(math.pi - m), phi, target - torch.sin(math.pi - m) * m)
        logits = cos.scatter(1, labels[:, None], phi[:, None]) * scale
        return F.cross_entropy(logits, labels)


def _first_release_init(num_classes: int, subcenters: int, in_dim: int) -> torch.Tensor:
    weight = torch.empty(num_classes * subcenters, in_dim)
    torch.nn.init.xavier_uniform_(weight)
    return weight


@pytest.mark.parametrize("subcenters", [1, 3])
def test_arcface_default_is_bit_identical_to_the_first_release(subcenters):
    params = LossParams(subcenters=subcenters)
    torch.manual_seed(3)
    loss = build_margin_loss(params, 16, COUNTS)
    torch.manual_seed(3)
    assert torch.equal(loss.weight, _first_release_init(len(COUNTS), subcenters, 16))
    assert torch.equal(loss.margins, dynamic_margins(COUNTS, 0.05, 0.5, -0.25))
    assert set(loss.state_dict()) == {"weight", "margins"}  # checkpoints keep loading

    x, labels = _batch(loss, 32)
    x.requires_grad_(True)
    got = loss(x, labels)
    got_grads = torch.autograd.grad(got, [loss.weight, x])
    frozen = _first_release_loss(loss.weight, loss.margins, subcenters, 30.0, x, labels)
    frozen_grads = torch.autograd.grad(frozen, [loss.weight, x])
    assert torch.equal(got, frozen)
    for a, b in zip(got_grads, frozen_grads, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
def test_the_loss_is_float32_and_unchanged_under_autocast(kind):
    torch.manual_seed(0)
    loss = MarginLoss(8, torch.full((5,), 0.3), subcenters=3, kind=kind)
    x, labels = _batch(loss)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss(x, labels)
    assert mixed.dtype == torch.float32
    assert torch.equal(mixed, loss(x, labels))


@pytest.mark.parametrize("subcenters", [1, 3])
def test_cosface_with_margin_zero_is_the_plain_softmax(subcenters):
    torch.manual_seed(0)
    loss = MarginLoss(8, torch.zeros(5), subcenters=subcenters, scale=30.0, kind="cosface")
    x, labels = _batch(loss)
    assert torch.equal(loss(x, labels), F.cross_entropy(loss.cosine(x) * 30.0, labels))


def test_class_margins_fixed_gives_every_class_the_number():
    m = class_margins(LossParams(margin=0.3, margin_min=0.1, margin_max=0.4), COUNTS)
    assert m.dtype == torch.float32
    assert torch.equal(m, torch.full((5,), 0.3, dtype=torch.float32))


def test_class_margins_dynamic_follows_the_counts():
    params = LossParams(margin="dynamic", margin_min=0.1, margin_max=0.4, margin_power=-0.5)
    m = class_margins(params, COUNTS)
    assert m.dtype == torch.float32
    assert torch.equal(m, dynamic_margins(COUNTS, 0.1, 0.4, -0.5))


def test_build_margin_loss_takes_every_setting():
    loss = build_margin_loss(LossParams(type="cosface", margin=0.35, subcenters=2, scale=16.0), 8, COUNTS)
    assert (loss.kind, loss.subcenters, loss.scale, loss.num_classes) == ("cosface", 2, 16.0, 5)
    assert loss.weight.shape == (10, 8)
    assert torch.equal(loss.margins, torch.full((5,), 0.35))


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="arcface or cosface"):
        MarginLoss(8, torch.zeros(5), kind="sphereface")


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
def test_loss_decreases_when_trained(kind):
    torch.manual_seed(0)
    loss = MarginLoss(16, dynamic_margins([4] * 6, 0.05, 0.5), subcenters=3, kind=kind)
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


ADAPTER = TypeAdapter(LossParams)


def _refusal(raw: dict) -> list[dict]:
    with pytest.raises(ValidationError) as err:
        ADAPTER.validate_python(raw)
    return err.value.errors()


def test_the_defaults_are_arcface_with_dynamic_margins():
    assert ADAPTER.validate_python({}) == LossParams()
    assert (LossParams().type, LossParams().margin) == ("arcface", "dynamic")


def test_an_unknown_type_is_refused():
    [error] = _refusal({"type": "sphereface"})
    assert error["loc"] == ("type",)


def test_margin_min_above_margin_max_is_refused_naming_both():
    [error] = _refusal({"margin_min": 0.6, "margin_max": 0.5})
    assert "margin_min (0.6)" in error["msg"] and "margin_max (0.5)" in error["msg"]
    with pytest.raises(ValueError, match=r"margin_min \(0.6\)"):  # also when built in code
        LossParams(margin_min=0.6, margin_max=0.5)


def test_margin_is_dynamic_or_a_number():
    assert ADAPTER.validate_python({"margin": "dynamic"}).margin == "dynamic"
    fixed = ADAPTER.validate_python({"margin": 0})
    assert fixed.margin == 0.0 and isinstance(fixed.margin, float)
    for bad in ["dyn", float("nan"), None]:
        [error] = _refusal({"margin": bad})  # one error, not one per union member
        assert error["loc"] == ("margin",) and '"dynamic" or a finite number' in error["msg"]


@pytest.mark.parametrize(
    ("kind", "accepted", "refused"),
    [("arcface", [0.0, 1.57], [-0.1, math.pi / 2]), ("cosface", [0.0, 1.5], [-0.1, 1.51])],
)
def test_a_fixed_margin_has_a_range_per_type(kind, accepted, refused):
    for margin in accepted:
        assert ADAPTER.validate_python({"type": kind, "margin": margin}).margin == margin
    for margin in refused:
        [error] = _refusal({"type": kind, "margin": margin})
        assert error["loc"] == ("margin",) and f"for type {kind}" in error["msg"]
