"""VoteNet's detection head (Qi et al. 2019) on per-voxel features of a sparse backbone (as PointContrast and
Text4Point put it on the SR-UNet): seeds, Hough voting, vote aggregation and box proposals.

* Seeds: farthest-point sampling of ``num_seed`` voxels per scene (from its first voxel); their decoder features
  are the seed features. A scene with fewer voxels takes all of them, then repeats its first voxel.
* Voting: a shared MLP gives each seed a vote = seed xyz + offset and a feature residual; vote features are
  L2-normalised (VoteNet's ``votenet.py``).
* Aggregation: FPS of ``num_proposal`` votes; a ball query (radius, ``num_samples`` votes, PointNet++ order);
  each neighbour's offset from the proposal centre divided by the radius, with its features, through a shared
  MLP, max-pooled.
* Proposals: a shared MLP -> objectness (2), centre offset (3), heading bin scores and normalised residuals
  (NH each), size cluster scores (NS) and normalised residuals (NS × 3), class scores (K).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lang3d.data.point_ops import ball_query, farthest_point_sample, index_points


@dataclass
class VoteNetOutput:
    """B scenes, S seeds, P proposals. seed_rows [B,S] int64 (rows of the batch's voxels), seed_xyz [B,S,3],
    vote_xyz [B,S,3], proposal_xyz [B,P,3] (aggregated vote positions), objectness [B,P,2], center [B,P,3] (metres),
    heading_scores / heading_residuals [B,P,NH], size_scores [B,P,NS], size_residuals [B,P,NS,3] (normalised, see
    ``text4point.box_coder``), sem_scores [B,P,K] (logits)."""

    seed_rows: torch.Tensor
    seed_xyz: torch.Tensor
    vote_xyz: torch.Tensor
    proposal_xyz: torch.Tensor
    objectness: torch.Tensor
    center: torch.Tensor
    heading_scores: torch.Tensor
    heading_residuals: torch.Tensor
    size_scores: torch.Tensor
    size_residuals: torch.Tensor
    sem_scores: torch.Tensor


def shared_mlp(channels: list[int], dim: int, last_plain: bool = False) -> nn.Sequential:
    """1×1 convolutions (``dim`` 1: Conv1d, 2: Conv2d) with BatchNorm and ReLU between ``channels``; with
    ``last_plain`` the last layer is a plain convolution with bias (an output layer)."""
    conv, norm = (nn.Conv1d, nn.BatchNorm1d) if dim == 1 else (nn.Conv2d, nn.BatchNorm2d)
    layers: list[nn.Module] = []
    pairs = list(zip(channels[:-1], channels[1:]))
    for i, (c_in, c_out) in enumerate(pairs):
        if last_plain and i == len(pairs) - 1:
            layers.append(conv(c_in, c_out, 1))
        else:
            layers += [conv(c_in, c_out, 1, bias=False), norm(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def sample_seeds(xyz: torch.Tensor, offset: torch.Tensor, num_seed: int) -> torch.Tensor:
    """Seed rows [B, num_seed] int64: FPS (from each scene's first voxel) over the voxels of each scene.

    xyz [ΣV,3] metres; offset [B] cumulative voxel counts (end of each scene). Scenes are padded with copies of
    their first voxel, which FPS only takes once every real voxel is taken: a scene with V < num_seed voxels
    gives its V voxels, then its first voxel repeated."""
    ends = offset.to(xyz.device).long()
    starts = torch.cat([ends.new_zeros(1), ends[:-1]])
    counts = ends - starts
    if len(counts) == 0 or int(counts.min()) < 1:
        raise ValueError(f"sample_seeds: every scene needs at least one voxel, got counts {counts.tolist()}")
    length = max(int(counts.max()), num_seed)
    local = torch.arange(length, device=xyz.device)[None, :]
    valid = local < counts[:, None]
    rows = torch.where(valid, starts[:, None] + local, starts[:, None])       # [B,L] padded with the first row
    picked = farthest_point_sample(xyz.detach()[rows], num_seed)              # [B,S] indices into L
    return rows.gather(1, picked)


class VoteNetHead(nn.Module):
    """Voting, aggregation and proposals on seed features of width ``seed_feature_dim``.

    forward(features [ΣV,C] voxel features, xyz [ΣV,3] metres, offset [B]) -> ``VoteNetOutput``.
    """

    def __init__(self, num_classes: int, num_heading_bin: int, num_size_cluster: int, seed_feature_dim: int = 256,
                 num_seed: int = 1024, num_proposal: int = 256, radius: float = 0.3, num_samples: int = 16,
                 aggregation_dim: int = 128):
        super().__init__()
        if not 0 < num_proposal <= num_seed:
            raise ValueError(f"VoteNetHead: need 0 < num_proposal <= num_seed, got {num_proposal} and {num_seed}")
        self.num_classes, self.num_heading_bin, self.num_size_cluster = num_classes, num_heading_bin, num_size_cluster
        self.num_seed, self.num_proposal = num_seed, num_proposal
        self.radius, self.num_samples = radius, num_samples
        c, a = seed_feature_dim, aggregation_dim
        self.vote_mlp = shared_mlp([c, c, c, 3 + c], dim=1, last_plain=True)
        self.aggregation_mlp = shared_mlp([3 + c, a, a, a], dim=2)
        out = 2 + 3 + 2 * num_heading_bin + 4 * num_size_cluster + num_classes
        self.proposal_mlp = shared_mlp([a, a, a, out], dim=1, last_plain=True)

    def forward(self, features: torch.Tensor, xyz: torch.Tensor, offset: torch.Tensor) -> VoteNetOutput:
        if features.dim() != 2 or xyz.shape != (len(features), 3):
            raise ValueError(f"VoteNetHead: features must be [ΣV,C] and xyz [ΣV,3], got {tuple(features.shape)} and "
                             f"{tuple(xyz.shape)}")
        xyz = xyz.to(features)
        seed_rows = sample_seeds(xyz, offset, self.num_seed)
        seed_xyz = xyz[seed_rows]                                            # [B,S,3]
        seed_features = features[seed_rows].transpose(1, 2)                  # [B,C,S]

        net = self.vote_mlp(seed_features)                                   # [B,3+C,S]
        vote_xyz = seed_xyz + net[:, :3].transpose(1, 2)
        vote_features = F.normalize(seed_features + net[:, 3:], dim=1)

        centres = farthest_point_sample(vote_xyz.detach(), self.num_proposal)            # [B,P]
        proposal_xyz = index_points(vote_xyz, centres)                                   # [B,P,3]
        neighbours = ball_query(proposal_xyz, vote_xyz, self.radius, self.num_samples)  # [B,P,n]
        grouped_xyz = (index_points(vote_xyz, neighbours) - proposal_xyz[:, :, None]) / self.radius
        grouped = index_points(vote_features.transpose(1, 2), neighbours)                # [B,P,n,C]
        grouped = torch.cat([grouped_xyz, grouped], dim=-1).permute(0, 3, 1, 2)          # [B,3+C,P,n]
        aggregated = self.aggregation_mlp(grouped).amax(dim=-1)                          # [B,A,P]

        scores = self.proposal_mlp(aggregated).transpose(1, 2)                           # [B,P,out]
        nh, ns = self.num_heading_bin, self.num_size_cluster
        parts = torch.split(scores, [2, 3, nh, nh, ns, 3 * ns, self.num_classes], dim=-1)
        return VoteNetOutput(seed_rows, seed_xyz, vote_xyz, proposal_xyz, objectness=parts[0],
                             center=proposal_xyz + parts[1], heading_scores=parts[2], heading_residuals=parts[3],
                             size_scores=parts[4], size_residuals=parts[5].reshape(*parts[5].shape[:2], ns, 3),
                             sem_scores=parts[6])
