"""Clique consolidation on constructed features with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from polyvivid.data.clique import consolidate


def clusters(sizes, noise=0, dim=16, spread=0.02, seed=0):
    """Tight clusters around orthogonal directions, then isolated noise detections; shuffled.

    Returns (features, the clusters as sets of indices, the noise indices)."""
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.normal(size=(dim, dim)))[0][: len(sizes) + noise]
    rows, labels = [], []
    for k, size in enumerate(sizes):
        rows += [centres[k] + rng.normal(scale=spread, size=dim) for _ in range(size)]
        labels += [k] * size
    for j in range(noise):
        rows.append(centres[len(sizes) + j])
        labels.append(-1 - j)
    order = rng.permutation(len(rows))
    features = np.stack(rows)[order]
    labels = np.array(labels)[order]
    return features, [set(np.nonzero(labels == k)[0].tolist()) for k in range(len(sizes))], \
        set(np.nonzero(labels < 0)[0].tolist())


def test_clusters_of_different_sizes_and_noise_give_exactly_the_clusters_largest_first():
    features, groups, noise = clusters([7, 4, 5], noise=3)
    kept = consolidate(features, num_frames=9, max_distance=0.1)  # keep cliques larger than 3
    assert [set(c) for c in kept] == [groups[0], groups[2], groups[1]]
    assert all(c == sorted(c) for c in kept)
    assert not noise & set().union(*map(set, kept))


def test_the_one_third_rule_is_applied_to_num_frames():
    features, groups, _ = clusters([6, 4, 3], noise=2)
    assert [set(c) for c in consolidate(features, num_frames=9, max_distance=0.1)] == [groups[0], groups[1]]
    # 12 frames: a clique must exceed 4, so the 4-clique stops the extraction
    assert [set(c) for c in consolidate(features, num_frames=12, max_distance=0.1)] == [groups[0]]
    # exactly a third is not enough: 6 > 18 / 3 fails
    assert consolidate(features, num_frames=18, max_distance=0.1) == []
    # 3 frames: even a single detection (1 > 1) is not kept, but a pair is
    assert [set(c) for c in consolidate(features, num_frames=3, max_distance=0.1)] == groups


def test_distance_threshold_decides_the_edges():
    a = np.array([1.0, 0.0])
    b = np.array([np.cos(0.5), np.sin(0.5)])  # cosine distance 1 - cos(0.5) = 0.1224
    features = np.stack([a, a, b, b])
    assert consolidate(features, num_frames=3, max_distance=0.13) == [[0, 1, 2, 3]]
    assert consolidate(features, num_frames=3, max_distance=0.12) == [[0, 1], [2, 3]]  # a tie: lowest index first


def test_edge_cases():
    assert consolidate(np.zeros((0, 4)), num_frames=3, max_distance=0.1) == []
    with pytest.raises(ValueError):
        consolidate(np.zeros(4), num_frames=3, max_distance=0.1)
    with pytest.raises(ValueError):
        consolidate(np.ones((2, 4)), num_frames=0, max_distance=0.1)
