"""Candidate instances of PointGroup (Jiang et al. 2020, Sec. 3.2-3.4): same-class points linked by a radius graph,
once on the original coordinates and once on the coordinates shifted by the predicted offsets, connected
components as clusters; and the index-set operations on clusters (IoU with ground truth, mask NMS).

The radius graph is built with ``scipy.spatial.cKDTree`` and split with ``scipy.sparse.csgraph``. Each point keeps
edges to at most ``max_neighbours`` of its nearest neighbours within the radius (PointGroup's ball query caps
its neighbour lists the same way): on shifted coordinates, which gather whole instances near their centres, the
full radius graph would grow quadratically. The result is exact whenever no point has more neighbours than that.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree


@dataclass
class Clusters:
    """I clusters over N points, as member lists grouped by cluster.

    point_index [M] int64: members (indices into the N points), cluster by cluster; cluster_index [M] int64:
    cluster of each member (0..I-1, non-decreasing); labels [I] int64: class of each cluster; shifted [I] bool:
    found on the shifted coordinates.
    """

    point_index: np.ndarray
    cluster_index: np.ndarray
    labels: np.ndarray
    shifted: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def sizes(self) -> np.ndarray:
        """[I] int64 member counts."""
        return np.bincount(self.cluster_index, minlength=len(self)).astype(np.int64)

    def members(self, i: int) -> np.ndarray:
        """Sorted point indices [n] of cluster i."""
        return np.sort(self.point_index[self.cluster_index == i])

    def incidence(self, num_points: int) -> csr_matrix:
        """[I, N] 0/1 sparse matrix (int64) of memberships."""
        ones = np.ones(len(self.point_index), dtype=np.int64)
        return csr_matrix((ones, (self.cluster_index, self.point_index)), shape=(len(self), num_points))

    def select(self, keep: np.ndarray) -> "Clusters":
        """The clusters ``keep`` ([J] int indices, in that order), renumbered 0..J-1."""
        keep = np.asarray(keep, dtype=np.int64)
        new_id = np.full(len(self), -1, dtype=np.int64)
        new_id[keep] = np.arange(len(keep))
        mapped = new_id[self.cluster_index]
        order = np.argsort(mapped[mapped >= 0], kind="stable")
        kept = np.flatnonzero(mapped >= 0)[order]
        return Clusters(self.point_index[kept], mapped[kept], self.labels[keep], self.shifted[keep])

    @staticmethod
    def concat(parts: list["Clusters"]) -> "Clusters":
        """The clusters of ``parts`` one after the other (same point numbering)."""
        starts = np.cumsum([0] + [len(c) for c in parts])
        return Clusters(np.concatenate([c.point_index for c in parts] + [np.zeros(0, np.int64)]),
                        np.concatenate([c.cluster_index + s for c, s in zip(parts, starts)] + [np.zeros(0, np.int64)]),
                        np.concatenate([c.labels for c in parts] + [np.zeros(0, np.int64)]),
                        np.concatenate([c.shifted for c in parts] + [np.zeros(0, bool)]))


def _check(name: str, array: np.ndarray, shape: tuple) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != len(shape) or any(s is not None and a != s for a, s in zip(array.shape, shape)):
        wanted = "[" + ", ".join("N" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"instance clustering: {name} must be {wanted}, got shape {array.shape}")
    return array


def cluster_points(coord: np.ndarray, labels: np.ndarray, radius: float, min_size: int = 1,
                   skip_classes: Iterable[int] = (), max_neighbours: int = 64) -> Clusters:
    """Connected components of the radius graph among points of the same class.

    coord [N, 3] metres; labels [N] int class per point (negative: never clustered); radius metres (points at
    distance <= radius are linked); components smaller than ``min_size`` points are dropped; classes in
    ``skip_classes`` are not clustered. Clusters are ordered by class, then by their smallest member.
    Returned with ``shifted`` all False.
    """
    coord = _check("coord", coord, (None, 3)).astype(np.float64)
    labels = _check("labels", labels, (len(coord),)).astype(np.int64)
    if not radius > 0 or min_size < 1 or max_neighbours < 1:
        raise ValueError(f"instance clustering: need radius > 0, min_size >= 1 and max_neighbours >= 1, got "
                         f"{radius}, {min_size}, {max_neighbours}")
    skip = set(int(c) for c in skip_classes)
    members, owners, classes = [], [], []
    for c in np.unique(labels[labels >= 0]):
        if int(c) in skip:
            continue
        index = np.flatnonzero(labels == c)
        component = _components(coord[index], radius, max_neighbours)
        big = np.bincount(component) >= min_size
        new_id = np.cumsum(big) - 1 + len(classes)
        keep = big[component]
        order = np.argsort(component[keep], kind="stable")  # by component, members in ascending index
        members.append(index[keep][order])
        owners.append(new_id[component[keep][order]])
        classes.extend([int(c)] * int(big.sum()))
    empty = np.zeros(0, dtype=np.int64)
    return Clusters(np.concatenate(members + [empty]), np.concatenate(owners + [empty]),
                    np.asarray(classes, dtype=np.int64), np.zeros(len(classes), dtype=bool))


def _components(coord: np.ndarray, radius: float, max_neighbours: int) -> np.ndarray:
    """Component [n] int64 of each point in the (neighbour-capped) radius graph, numbered in order of first point."""
    n = len(coord)
    k = min(max_neighbours + 1, n)  # +1: the query returns the point itself
    bound = np.nextafter(radius, np.inf)  # the query keeps distances < bound: this makes it <= radius
    distance, neighbour = cKDTree(coord).query(coord, k=k, distance_upper_bound=bound)
    distance, neighbour = distance.reshape(n, k), neighbour.reshape(n, k)
    linked = np.isfinite(distance)  # missing neighbours come back as (inf, n)
    rows = np.repeat(np.arange(n), k)[linked.ravel()]
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, neighbour[linked])), shape=(n, n))
    count, component = connected_components(graph, directed=False)
    first = np.full(count, n, dtype=np.int64)
    np.minimum.at(first, component, np.arange(n))
    renumber = np.empty(count, dtype=np.int64)
    renumber[np.argsort(first)] = np.arange(count)
    return renumber[component]


def propose_instances(coord: np.ndarray, offset: np.ndarray, labels: np.ndarray, radius: float,
                      min_size: int = 1, skip_classes: Iterable[int] = (), max_neighbours: int = 64) -> Clusters:
    """PointGroup's dual-set proposals: ``cluster_points`` on coord [N, 3] metres, then on coord + offset [N, 3]
    metres (predicted vector to the instance centre), concatenated (original-coordinate clusters first)."""
    offset = _check("offset", offset, (len(np.asarray(coord)), 3))
    original = cluster_points(coord, labels, radius, min_size, skip_classes, max_neighbours)
    shifted = cluster_points(np.asarray(coord, np.float64) + offset, labels, radius, min_size, skip_classes,
                             max_neighbours)
    shifted.shifted[:] = True
    return Clusters.concat([original, shifted])


def best_iou(clusters: Clusters, instance: np.ndarray) -> np.ndarray:
    """[I] float64: each cluster's highest IoU with a ground-truth instance; instance [N] int id per point (-1:
    none). Points without an instance count in the cluster's size (the union), never in an intersection."""
    instance = _check("instance", instance, (None,)).astype(np.int64)
    if len(clusters) == 0:
        return np.zeros(0)
    ids, gt = np.unique(instance, return_inverse=True)
    valid = ids >= 0
    gt_size = np.bincount(gt, minlength=len(ids))
    inter = np.bincount(clusters.cluster_index * len(ids) + gt[clusters.point_index],
                        minlength=len(clusters) * len(ids)).reshape(len(clusters), len(ids))
    union = clusters.sizes[:, None] + gt_size[None, :] - inter
    iou = np.where(valid[None, :], inter / np.maximum(union, 1), 0.0)
    return iou.max(1)


def cluster_iou(clusters: Clusters, num_points: int) -> np.ndarray:
    """[I, I] float64 IoU between the member sets of every pair of clusters over ``num_points`` points."""
    incidence = clusters.incidence(num_points)
    inter = (incidence @ incidence.T).toarray().astype(np.float64)
    sizes = clusters.sizes.astype(np.float64)
    return inter / np.maximum(sizes[:, None] + sizes[None, :] - inter, 1.0)


def mask_nms(clusters: Clusters, scores: np.ndarray, num_points: int, iou_threshold: float) -> np.ndarray:
    """Greedy class-agnostic non-maximum suppression (PointGroup's test): clusters by descending score (ties: lower
    index first), each kept unless its IoU with an already kept one is > ``iou_threshold``. scores [I];
    returns the kept indices [J] int64 in descending score order."""
    scores = _check("scores", scores, (len(clusters),))
    iou = cluster_iou(clusters, num_points)
    kept: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        if not kept or iou[i, kept].max() <= iou_threshold:
            kept.append(int(i))
    return np.asarray(kept, dtype=np.int64)
