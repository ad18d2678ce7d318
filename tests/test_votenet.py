"""VoteNet head and losses: shapes and seed sampling, the losses against per-proposal Python loops, objectness
assignment on a hand-made scene, zero box loss for perfect predictions."""
import math

import pytest
import torch
import torch.nn.functional as F

from text4point.box_coder import BoxCoder
from text4point.votenet_head import VoteNetHead, VoteNetOutput, sample_seeds
from text4point.votenet_loss import build_targets, detection_losses, objectness_targets, vote_loss

MEAN = torch.tensor([[1.0, 0.8, 0.6], [0.5, 0.5, 0.9], [2.0, 1.5, 0.5]])
NH = 4


def scenes(counts, seed=0):
    """Voxel xyz [ΣV,3] metres and offsets [B] of scenes with the given voxel counts."""
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(sum(counts), 3, generator=g) * 3
    return xyz, torch.tensor(counts).cumsum(0)


def test_seed_sampling_is_per_scene_fps_and_pads_small_scenes_with_their_first_voxel():
    xyz, offset = scenes([50, 7, 30])
    rows = sample_seeds(xyz, offset, 16)
    assert rows.shape == (3, 16) and rows.dtype == torch.int64
    assert ((rows[0] >= 0) & (rows[0] < 50)).all() and ((rows[2] >= 57) & (rows[2] < 87)).all()
    assert len(set(rows[0].tolist())) == 16 and rows[0, 0] == 0 and rows[2, 0] == 57
    assert sorted(rows[1, :7].tolist()) == list(range(50, 57)) and (rows[1, 7:] == 50).all()
    with pytest.raises(ValueError, match="at least one voxel"):
        sample_seeds(xyz, torch.tensor([50, 50, 87]), 16)


def test_head_output_shapes_and_votes_start_at_the_seeds():
    torch.manual_seed(0)
    xyz, offset = scenes([120, 40])
    head = VoteNetHead(num_classes=3, num_heading_bin=NH, num_size_cluster=3, seed_feature_dim=16, num_seed=64,
                       num_proposal=20, radius=0.5, num_samples=8, aggregation_dim=32)
    out = head(torch.randn(len(xyz), 16), xyz, offset)
    b, s, p = 2, 64, 20
    assert out.seed_rows.shape == (b, s) and out.seed_xyz.shape == out.vote_xyz.shape == (b, s, 3)
    torch.testing.assert_close(out.seed_xyz, xyz[out.seed_rows])
    assert out.objectness.shape == (b, p, 2) and out.center.shape == out.proposal_xyz.shape == (b, p, 3)
    assert out.heading_scores.shape == out.heading_residuals.shape == (b, p, NH)
    assert out.size_scores.shape == (b, p, 3) and out.size_residuals.shape == (b, p, 3, 3)
    assert out.sem_scores.shape == (b, p, 3)
    # every proposal sits on one of its scene's votes
    for i in range(b):
        gap = (out.proposal_xyz[i][:, None] - out.vote_xyz[i][None]).abs().sum(-1).min(1).values
        assert (gap == 0).all()
    out.center.sum().backward()   # gradients reach the voting MLP through the aggregated votes
    assert head.vote_mlp[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="num_proposal <= num_seed"):
        VoteNetHead(3, NH, 3, num_seed=16, num_proposal=32)


def test_vote_loss_against_a_loop():
    g = torch.Generator().manual_seed(1)
    seed, vote, gt = torch.randn(2, 10, 3, generator=g), torch.randn(2, 10, 3, generator=g), torch.randn(2, 10, 9,
                                                                                                     generator=g)
    mask = torch.rand(2, 10, generator=g) > 0.4
    total, count = 0.0, 0
    for b in range(2):
        for i in range(10):
            if mask[b, i]:
                ends = [seed[b, i] + gt[b, i, 3 * j:3 * j + 3] for j in range(3)]
                total += min(float((vote[b, i] - e).abs().sum()) for e in ends)
                count += 1
    assert vote_loss(vote, seed, gt, mask).item() == pytest.approx(total / (count + 1e-6), rel=1e-5)


def targets_for(boxes, labels, coder):
    return build_targets(boxes, labels, coder)


def test_objectness_assignment_on_a_hand_made_scene():
    coder = BoxCoder(MEAN, NH)
    boxes = [torch.tensor([[0.0, 0, 0, 1, 1, 1, 0], [5.0, 0, 0, 1, 1, 1, 0]]), torch.zeros(0, 7)]
    targets = targets_for(boxes, [torch.tensor([0, 2]), torch.zeros(0, dtype=torch.int64)], coder)
    assert targets.center.shape == (2, 2, 3) and targets.mask.tolist() == [[True, True], [False, False]]
    proposals = torch.tensor([[[0.1, 0, 0], [0.45, 0, 0], [2.0, 0, 0], [4.8, 0.1, 0], [5.0, 0.59, 0]],
                              [[0.0, 0, 0], [1.0, 0, 0], [5.0, 0, 0], [9.0, 0, 0], [0.2, 0, 0]]])
    label, mask, assignment = objectness_targets(proposals, targets, near=0.3, far=0.6)
    assert label.tolist() == [[1, 0, 0, 1, 0], [0, 0, 0, 0, 0]]
    assert mask.tolist() == [[True, False, True, True, False], [True] * 5]    # 0.45 and 0.59 m: ignored
    assert assignment[0].tolist() == [0, 0, 0, 1, 1]


def random_output(b, p, s, k, nh, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    proposal = torch.rand(b, p, 3, generator=g) * 2
    return VoteNetOutput(seed_rows=torch.zeros(b, s, dtype=torch.int64), seed_xyz=r(b, s, 3), vote_xyz=r(b, s, 3),
                         proposal_xyz=proposal, objectness=r(b, p, 2), center=proposal + 0.2 * r(b, p, 3),
                         heading_scores=r(b, p, nh), heading_residuals=r(b, p, nh), size_scores=r(b, p, k),
                         size_residuals=r(b, p, k, 3), sem_scores=r(b, p, k))


def reference_losses(out, boxes, labels, coder, near, far):
    """VoteNet's proposal losses one proposal at a time (VoteNet's formulas, written out)."""
    sums = {key: 0.0 for key in ("obj", "obj_n", "c1", "pos", "c2", "gt", "hc", "hr", "sc", "sr", "sem")}
    for b in range(len(boxes)):
        enc = coder.encode(boxes[b], labels[b]) if len(boxes[b]) else None
        for p in range(out.proposal_xyz.shape[1]):
            if enc is None:
                dist, j = math.inf, None
            else:
                dists = [math.dist(out.proposal_xyz[b, p].tolist(), c.tolist()) for c in enc.center]
                j = min(range(len(dists)), key=dists.__getitem__)
                dist = dists[j]
            label = int(dist < near)
            if dist < near or dist > far:
                w = (0.2, 0.8)[label]
                sums["obj"] += w * float(-F.log_softmax(out.objectness[b, p], 0)[label])
                sums["obj_n"] += 1
            if not label:
                continue
            sums["pos"] += 1
            sums["c1"] += min(float(((out.center[b, p] - c) ** 2).sum()) for c in enc.center)
            h, s = int(enc.heading_class[j]), int(enc.size_class[j])
            sums["hc"] += float(-F.log_softmax(out.heading_scores[b, p], 0)[h])
            sums["hr"] += float(F.huber_loss(out.heading_residuals[b, p, h], enc.heading_residual[j]))
            sums["sc"] += float(-F.log_softmax(out.size_scores[b, p], 0)[s])
            sums["sr"] += float(F.huber_loss(out.size_residuals[b, p, s], enc.size_residual[j]))
            sums["sem"] += float(-F.log_softmax(out.sem_scores[b, p], 0)[int(labels[b][j])])
        for c in boxes[b][:, :3]:
            sums["c2"] += min(float(((q - c) ** 2).sum()) for q in out.center[b])
            sums["gt"] += 1
    pos = sums["pos"] + 1e-6
    ref = {"objectness": sums["obj"] / (sums["obj_n"] + 1e-6),
           "center": sums["c1"] / pos + sums["c2"] / (sums["gt"] + 1e-6),
           "heading_cls": sums["hc"] / pos, "heading_reg": sums["hr"] / pos, "size_cls": sums["sc"] / pos,
           "size_reg": sums["sr"] / pos, "sem_cls": sums["sem"] / pos}
    return ref


def test_losses_against_per_proposal_loops():
    coder = BoxCoder(MEAN, NH)
    boxes = [torch.tensor([[0.5, 0.5, 0.3, 1.0, 0.7, 0.6, 0.4], [1.5, 1.2, 0.4, 0.4, 0.6, 0.8, -2.0],
                           [0.3, 1.6, 0.3, 2.2, 1.4, 0.5, 3.0]]),
             torch.tensor([[1.0, 1.0, 0.5, 0.6, 0.5, 1.0, 1.0]]), torch.zeros(0, 7)]
    labels = [torch.tensor([0, 1, 2]), torch.tensor([1]), torch.zeros(0, dtype=torch.int64)]
    out = random_output(3, 40, 8, 3, NH, seed=2)
    got = detection_losses(out, build_targets(boxes, labels, coder), torch.zeros(3, 8, 9),
                           torch.zeros(3, 8, dtype=torch.bool), near=0.3, far=0.6)
    ref = reference_losses(out, boxes, labels, coder, 0.3, 0.6)
    assert got["positive_ratio"] > 0
    for key, value in ref.items():
        assert got[key].item() == pytest.approx(value, rel=1e-4), key
    box = ref["center"] + 0.1 * ref["heading_cls"] + ref["heading_reg"] + 0.1 * ref["size_cls"] + ref["size_reg"]
    assert got["loss"].item() == pytest.approx(10 * (0.5 * ref["objectness"] + box + 0.1 * ref["sem_cls"]), rel=1e-4)


def perfect_output(boxes, labels, coder, seed_xyz, gt_votes):
    """Proposals exactly on the ground-truth boxes with confident, correct scores and exact residuals."""
    big = 1e3
    targets = build_targets(boxes, labels, coder)
    enc_center, b, g = targets.center, *targets.center.shape[:2]
    k = len(MEAN)
    one_hot = lambda idx, n: F.one_hot(idx, n).float() * big  # noqa: E731
    size_res = torch.zeros(b, g, k, 3)
    size_res.scatter_(2, targets.size_class[..., None, None].expand(b, g, 1, 3), targets.size_residual[:, :, None])
    return targets, VoteNetOutput(
        seed_rows=torch.zeros(seed_xyz.shape[:2], dtype=torch.int64), seed_xyz=seed_xyz,
        vote_xyz=seed_xyz + gt_votes[..., :3], proposal_xyz=enc_center.clone(),
        objectness=torch.stack([torch.zeros(b, g), torch.full((b, g), big)], -1), center=enc_center.clone(),
        heading_scores=one_hot(targets.heading_class, NH),
        heading_residuals=targets.heading_residual[..., None].expand(b, g, NH).clone(),
        size_scores=one_hot(targets.size_class, k), size_residuals=size_res, sem_scores=one_hot(targets.labels, k))


def test_box_loss_is_zero_for_perfect_predictions_and_positive_otherwise():
    coder = BoxCoder(MEAN, NH)
    boxes = [torch.tensor([[0.0, 0.0, 0.3, 1.1, 0.7, 0.6, 0.7], [3.0, 1.0, 0.4, 0.4, 0.6, 0.8, -2.5]]),
             torch.tensor([[1.0, 2.0, 0.5, 2.5, 1.4, 0.4, 3.1], [4.0, 4.0, 0.5, 0.9, 0.8, 0.5, 0.0]])]
    labels = [torch.tensor([0, 1]), torch.tensor([2, 0])]
    g = torch.Generator().manual_seed(4)
    seed_xyz, gt_votes = torch.randn(2, 6, 3, generator=g), torch.randn(2, 6, 9, generator=g)
    mask = torch.ones(2, 6, dtype=torch.bool)
    targets, out = perfect_output(boxes, labels, coder, seed_xyz, gt_votes)
    losses = detection_losses(out, targets, gt_votes, mask)
    for key in ("vote", "objectness", "center", "heading_cls", "heading_reg", "size_cls", "size_reg", "sem_cls",
                "box", "loss"):
        assert losses[key].item() == pytest.approx(0.0, abs=1e-5), key
    assert losses["positive_ratio"].item() == 1.0
    perturbations = {"center": ("center", 0.05), "heading_reg": ("heading_residuals", 0.1),
                     "size_reg": ("size_residuals", 0.1), "vote": ("vote_xyz", 0.1)}
    for key, (field, delta) in perturbations.items():
        moved = VoteNetOutput(**{**out.__dict__, field: getattr(out, field) + delta})
        assert detection_losses(moved, targets, gt_votes, mask)[key].item() > 1e-3, key
    for key, field in (("heading_cls", "heading_scores"), ("size_cls", "size_scores"), ("sem_cls", "sem_scores")):
        swapped = VoteNetOutput(**{**out.__dict__, field: getattr(out, field).roll(1, dims=-1)})
        changed = detection_losses(swapped, targets, gt_votes, mask)
        assert changed[key].item() > 1.0 and changed["box" if key != "sem_cls" else "loss"].item() > 0.05, key
