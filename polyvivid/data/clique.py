"""Clique-based subject consolidation (paper section 3, appendix A.3).

One subject phrase is detected on several sampled frames; some detections are the subject, some are
mistakes. Detections whose features agree form a clique of the similarity graph; a clique larger
than a third of the sampled frames is a consistent subject, and its members yield the subject's
reference image(s).
"""

from __future__ import annotations

import numpy as np


def similarity_graph(features: np.ndarray, max_distance: float):
    """Nodes are detections; an edge joins two whose cosine distance is below max_distance."""
    import networkx as nx

    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be [n, d], got shape {features.shape}")
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    unit = features / np.where(norms == 0, 1.0, norms)
    distance = 1.0 - unit @ unit.T
    graph = nx.Graph()
    graph.add_nodes_from(range(len(features)))
    rows, cols = np.nonzero(np.triu(distance < max_distance, k=1))
    graph.add_edges_from(zip(rows.tolist(), cols.tolist()))
    return graph


def _max_clique(graph, nodes) -> frozenset:
    import networkx as nx

    if len(nodes) == 1:
        return frozenset(nodes)
    clique, _ = nx.max_weight_clique(graph.subgraph(nodes), weight=None)
    return frozenset(clique)


def consolidate(features: np.ndarray, num_frames: int, max_distance: float) -> list[list[int]]:
    """Cliques of consistent detections, in extraction order, each a sorted list of detection indices.

    Repeatedly take a maximum clique of the similarity graph and keep it while its size exceeds
    num_frames / 3, removing its nodes; stop at the first maximum clique that does not. Among
    maximum cliques of equal size, the one whose connected component has the lowest index goes first.
    """
    import networkx as nx

    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    graph = similarity_graph(features, max_distance)
    # A clique lies inside one connected component: search components separately and, after taking
    # a clique, search again only the pieces of the component it came from.
    best = {frozenset(c): None for c in nx.connected_components(graph)}
    best = {c: _max_clique(graph, c) for c in best}
    kept = []
    while best:
        component = max(best, key=lambda c: (len(best[c]), -min(c)))
        clique = best.pop(component)
        if len(clique) <= num_frames / 3:
            break
        kept.append(sorted(clique))
        for piece in nx.connected_components(graph.subgraph(component - clique)):
            best[frozenset(piece)] = _max_clique(graph, piece)
    return kept
