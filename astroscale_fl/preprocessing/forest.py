"""An isolation forest as plain arrays: fitted with scikit-learn, stored in ``preprocessing.json``,
scored with numpy (what a forest fitted on ``preprocess.reference`` needs to travel with a model).

Each tree is its node arrays (``left``, ``right``: child index or -1 at a leaf; ``feature``,
``threshold``: go left where ``x[feature] <= threshold``; ``leaf_depth``: the leaf's depth plus
the average path length of the samples left in it, minus one, as scikit-learn's
``IsolationForest`` scores it). The anomaly score of a row is ``2 ** (-mean path / c(max_samples))``
(Liu et al. 2008: ~0.5 normal, -> 1 anomalous), equal to ``-IsolationForest.score_samples``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from astroscale_fl.errors import DataError

TREE_FIELDS = ("left", "right", "feature", "threshold", "leaf_depth")
MAX_DEPTH = 12  # scikit-learn's trees on 256 samples are at most 8 deep; deeper is not a forest we wrote


def export_forest(forest) -> dict[str, Any]:
    """A fitted ``sklearn.ensemble.IsolationForest`` (on all its columns) as JSON-ready arrays."""
    from sklearn.ensemble._iforest import _average_path_length

    if forest.max_features != 1.0 or any(e.tree_.max_depth > MAX_DEPTH for e in forest.estimators_):
        raise ValueError(f"export_forest: only forests fitted on all columns (max_features=1.0), at most {MAX_DEPTH} deep")
    trees = []
    for estimator, depth, average in zip(forest.estimators_, forest._decision_path_lengths, forest._average_path_length_per_tree):
        tree = estimator.tree_
        trees.append({"left": tree.children_left.tolist(), "right": tree.children_right.tolist(),
                      "feature": tree.feature.tolist(), "threshold": tree.threshold.tolist(),
                      "leaf_depth": (np.asarray(depth, np.float64) + average - 1.0).tolist()})
    return {"trees": trees, "denominator": float(len(trees) * _average_path_length([forest._max_samples])[0])}


def tree_depths(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Depth of every node (children are numbered after their parent, as scikit-learn does)."""
    depth = np.zeros(len(left), np.int64)
    for node in np.flatnonzero(left >= 0):
        depth[left[node]] = depth[right[node]] = depth[node] + 1
    return depth


class CompleteForest:
    """All trees laid out as complete binary trees of the forest's depth D (a leaf above the last
    level is padded with always-left nodes down to a copy of itself), so scoring is D steps of
    index arithmetic for every (row, tree) pair at once, in blocks of rows (memory: ``BLOCK`` x trees)."""

    BLOCK = 8192

    def __init__(self, state: dict[str, Any]):
        trees = state["trees"]
        arrays = [tuple(np.asarray(t[k]) for k in TREE_FIELDS) for t in trees]
        self.depth = int(max(tree_depths(left, right).max() for left, right, *_ in arrays))
        inner, leaves = 2 ** self.depth - 1, 2 ** self.depth
        self.feature = np.zeros((len(trees), inner), np.int64)
        self.threshold = np.full((len(trees), inner), np.inf)  # padding: x <= inf, always left
        self.leaf_depth = np.zeros((len(trees), leaves))
        for k, (left, right, feature, threshold, leaf_depth) in enumerate(arrays):
            stack = [(0, 0)]  # (node of the tree, slot in the complete tree)
            while stack:
                node, slot = stack.pop()
                if slot >= inner:
                    self.leaf_depth[k, slot - inner] = leaf_depth[node]
                elif left[node] >= 0:
                    self.feature[k, slot], self.threshold[k, slot] = feature[node], threshold[node]
                    stack += [(left[node], 2 * slot + 1), (right[node], 2 * slot + 2)]
                else:
                    stack.append((node, 2 * slot + 1))
        self.denominator = float(state["denominator"])

    def scores(self, matrix: np.ndarray) -> np.ndarray:
        """Anomaly score in (0, 1] of each row of ``matrix`` (rows x the forest's columns; imputed, no NaN)."""
        x = np.asarray(matrix, dtype=np.float32)  # scikit-learn's trees compare float32 values
        trees = len(self.feature)
        inner = self.feature.shape[1]
        feature, threshold, leaf_depth = self.feature.ravel(), self.threshold.ravel(), self.leaf_depth.ravel()
        tree_slot = (np.arange(trees) * inner)[None, :]
        tree_leaf = (np.arange(trees) * (inner + 1) - inner)[None, :]
        depths = np.empty(len(x))
        for start in range(0, len(x), self.BLOCK):
            block = x[start:start + self.BLOCK]
            values, row = block.ravel(), (np.arange(len(block)) * block.shape[1])[:, None]
            node = np.zeros((len(block), trees), np.int64)
            for _ in range(self.depth):
                at = tree_slot + node
                node = 2 * node + 1 + (values[row + feature[at]] > threshold[at])
            depths[start:start + len(block)] = leaf_depth[tree_leaf + node].sum(axis=1)
        return 2.0 ** (-depths / self.denominator) if self.denominator else np.ones(len(x))


def check_forest(path: str, value: Any, columns: int | None = None) -> dict[str, Any]:
    """A checked forest from ``preprocessing.json`` (raises a one-line DataError naming the bad field).

    Children must come after their parent (as scikit-learn numbers them), so scoring always ends."""
    def fail(where: str, expected: str, got: Any) -> None:
        raise DataError(f"preprocessing.json: {where}: expected {expected}, got {str(got)[:80]!r}")

    if not isinstance(value, dict) or set(value) != {"trees", "denominator"}:
        fail(path, "an object {trees, denominator}", value)
    denominator = value["denominator"]
    if isinstance(denominator, bool) or not isinstance(denominator, (int, float)) or not 0 <= denominator < 1e12:
        fail(f"{path}.denominator", "a non-negative number", denominator)
    trees = value["trees"]
    if not isinstance(trees, list) or not trees:
        fail(f"{path}.trees", "a non-empty list of trees", trees)
    for t, tree in enumerate(trees):
        where = f"{path}.trees[{t}]"
        if not isinstance(tree, dict) or set(tree) != set(TREE_FIELDS):
            fail(where, f"an object with {list(TREE_FIELDS)}", tree)
        try:
            left, right, feature = (np.asarray(tree[k], dtype=np.int64) for k in ("left", "right", "feature"))
            threshold, leaf_depth = np.asarray(tree["threshold"], np.float64), np.asarray(tree["leaf_depth"], np.float64)
        except (TypeError, ValueError, OverflowError) as exc:
            fail(where, "lists of numbers", exc)
        n = len(left)
        if n == 0 or any(a.shape != (n,) for a in (right, feature, threshold, leaf_depth)):
            fail(where, "node lists of one equal, non-zero length", {k: len(tree[k]) for k in TREE_FIELDS})
        index = np.arange(n)
        inner = left >= 0
        if np.any((left != -1) & ~inner) or np.any(inner != (right >= 0)) or np.any(left[inner] <= index[inner]) \
                or np.any(right[inner] <= index[inner]) or np.any(left[inner] >= n) or np.any(right[inner] >= n):
            fail(f"{where}.left/right", "child indices after their parent and inside the tree (-1 at leaves)", "")
        if columns is not None and np.any(inner & ((feature < 0) | (feature >= columns))):
            fail(f"{where}.feature", f"column indices in [0, {columns})", feature[inner & ((feature < 0) | (feature >= columns))][:3])
        if not np.all(np.isfinite(threshold[inner])) or not np.all(np.isfinite(leaf_depth)):
            fail(f"{where}.threshold/leaf_depth", "finite numbers", "")
        depth = tree_depths(left, right).max()
        if depth > MAX_DEPTH:
            fail(where, f"a tree at most {MAX_DEPTH} levels deep", depth)
    return {"trees": trees, "denominator": float(denominator)}
