"""Point-Bind loss and projection: InfoNCE against loops, the gathered loss under two gloo ranks (even, uneven
and empty shares), the head."""
import math

import pytest
import torch
import torch.nn.functional as F
from gloo_ranks import on_gloo_ranks

from pointbind.head import LogitScale, ProjectionHead
from pointbind.loss import alignment_loss


def unit(*shape, seed):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def naive_info_nce(a, b, scale):
    """Mean over rows of -log softmax(scale·cos) at the own column, both directions, averaged (plain loops)."""
    n = len(a)
    total = 0.0
    for x, y in ((a, b), (b, a)):
        for i in range(n):
            logits = [scale * sum(float(x[i, d]) * float(y[j, d]) for d in range(x.shape[1])) for j in range(n)]
            total += -(logits[i] - math.log(sum(math.exp(v) for v in logits))) / n
    return total / 2


def test_alignment_loss_matches_loops():
    point, text, image = unit(6, 5, seed=0), unit(6, 5, seed=1), unit(6, 5, seed=2)
    scale = torch.tensor(7.5)
    out = alignment_loss(point, text, image, scale, image_weight=0.5)
    text_term, image_term = naive_info_nce(point, text, 7.5), naive_info_nce(point, image, 7.5)
    assert out["loss_text"].item() == pytest.approx(text_term, rel=1e-5)
    assert out["loss_image"].item() == pytest.approx(image_term, rel=1e-5)
    assert out["loss"].item() == pytest.approx(text_term + 0.5 * image_term, rel=1e-5)
    own = ((point @ text.T).argmax(1) == torch.arange(6)).float().mean()
    assert out["acc_text"] == own
    text_only = alignment_loss(point, text, None, scale)
    assert set(text_only) == {"loss", "loss_text", "acc_text"}
    assert text_only["loss"].item() == pytest.approx(text_term, rel=1e-5)


def test_alignment_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="text or image"):
        alignment_loss(unit(2, 3, seed=0), None, None, torch.tensor(1.0))
    with pytest.raises(ValueError, match="do not match"):
        alignment_loss(unit(2, 3, seed=0), unit(3, 3, seed=1), None, torch.tensor(1.0))


def global_batch_loss(point, text, image, scale, image_weight):
    """The whole batch on one device, as one N×N similarity matrix per modality: its row-wise and column-wise
    cross-entropies against the diagonal (independent of the implementation's per-rank rows and offsets)."""
    target = torch.arange(len(point))
    loss = 0.0
    for other, weight in ((text, 1.0), (image, image_weight)):
        logits = scale * point @ other.T
        loss = loss + weight * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    return loss


SPLITS = [(4, 4), (4, 3), (0, 5)]   # rows per rank; (0, 5): rank 0's samples were all skipped


def _rank(rank: int) -> list[dict]:
    results = []
    for split in SPLITS:
        rows = slice(sum(split[:rank]), sum(split[:rank + 1]))
        point, text, image = (unit(sum(split), 4, seed=s)[rows].clone().requires_grad_() for s in (0, 1, 2))
        scale = torch.tensor(5.0, requires_grad=True)
        loss = alignment_loss(point, text, image, scale, image_weight=0.5)["loss"]
        loss.backward()
        results.append({"loss": loss.detach(), "grads": [t.grad for t in (point, text, image)], "scale": scale.grad})
    return results


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return on_gloo_ranks(_rank, tmp_path_factory.mktemp("gathered_loss"))


@pytest.mark.parametrize("case", range(len(SPLITS)), ids=[f"{a}+{b}" for a, b in SPLITS])
def test_gathered_loss_equals_the_global_batch_loss(two_ranks, case):
    """Two gloo ranks holding ``split`` rows (uneven, or none on a rank whose samples were all skipped): the mean
    of their losses (what DDP optimises) is the loss of the whole batch on one device; the gradient reaching each
    rank's rows (through the gather's backward, summed over ranks) is world × the whole batch's gradient, so
    DDP's averaged parameter gradients are the whole batch's; the logit scale's gradients average to the whole
    batch's."""
    split, results, world = SPLITS[case], [r[case] for r in two_ranks], 2
    full = [unit(sum(split), 4, seed=s).requires_grad_() for s in (0, 1, 2)]
    scale = torch.tensor(5.0, requires_grad=True)
    loss = global_batch_loss(*full, scale, 0.5)
    loss.backward()
    assert sum(r["loss"] for r in results).item() / world == pytest.approx(loss.item(), rel=1e-5)
    for k in range(3):
        gathered = torch.cat([r["grads"][k] for r in results])
        torch.testing.assert_close(gathered, world * full[k].grad, atol=1e-6, rtol=1e-5)
    assert sum(r["scale"] for r in results).item() / world == pytest.approx(scale.grad.item(), rel=1e-5)


def test_projection_head_and_logit_scale():
    torch.manual_seed(0)
    head = ProjectionHead(in_dim=10, embed_dim=6, hidden_dim=16)
    assert head.proj.bias is None and head.out.bias is None
    assert head.dropout.p == 0.5
    out = head(torch.randn(4, 10))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(4))
    scale = LogitScale()
    assert scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        scale.log_scale.fill_(9.0)
    assert scale().item() == pytest.approx(100.0, rel=1e-5)  # clamped like CLIP
    scale.clamp_()
    assert scale.log_scale.item() == pytest.approx(math.log(100.0))
