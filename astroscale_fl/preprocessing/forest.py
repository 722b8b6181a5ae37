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


def export_forest(forest) -> dict[str, Any]:
    """A fitted ``sklearn.ensemble.IsolationForest`` (on all its columns) as JSON-ready arrays."""
    from sklearn.ensemble._iforest import _average_path_length

    if forest.max_features != 1.0:
        raise ValueError("export_forest: only forests fitted on all columns (max_features=1.0)")
    trees = []
    for estimator, depth, average in zip(forest.estimators_, forest._decision_path_lengths, forest._average_path_length_per_tree):
        tree = estimator.tree_
        trees.append({"left": tree.children_left.tolist(), "right": tree.children_right.tolist(),
                      "feature": tree.feature.tolist(), "threshold": tree.threshold.tolist(),
                      "leaf_depth": (np.asarray(depth, np.float64) + average - 1.0).tolist()})
    return {"trees": trees, "denominator": float(len(trees) * _average_path_length([forest._max_samples])[0])}


class StackedForest:
    """All trees of a forest state in one set of node arrays, scored level by level for every
    (row, tree) pair at once, in blocks of rows (memory stays at ``BLOCK`` x trees)."""

    BLOCK = 8192

    def __init__(self, state: dict[str, Any]):
        sizes = [len(t["left"]) for t in state["trees"]]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        stack = lambda key: np.concatenate([np.asarray(t[key]) for t in state["trees"]])  # noqa: E731
        shift = np.repeat(offsets, sizes)
        left, right = stack("left").astype(np.int64), stack("right").astype(np.int64)
        inner = left >= 0
        self.left = np.where(inner, left + shift, -1)
        self.right = np.where(inner, right + shift, -1)
        self.feature = np.where(inner, stack("feature"), 0).astype(np.int64)
        self.threshold = stack("threshold").astype(np.float64)
        self.leaf_depth = stack("leaf_depth").astype(np.float64)
        self.roots = offsets
        self.denominator = float(state["denominator"])

    def scores(self, matrix: np.ndarray) -> np.ndarray:
        """Anomaly score in (0, 1] of each row of ``matrix`` (rows x the forest's columns)."""
        x = np.asarray(matrix, dtype=np.float32)  # scikit-learn's trees compare float32 values
        depths = np.empty(len(x))
        for start in range(0, len(x), self.BLOCK):
            block = x[start:start + self.BLOCK]
            node = np.broadcast_to(self.roots, (len(block), len(self.roots))).copy()
            row = np.arange(len(block))[:, None]
            while True:
                inner = self.left[node] >= 0
                if not inner.any():
                    break
                go_left = block[row, self.feature[node]] <= self.threshold[node]
                node = np.where(inner, np.where(go_left, self.left[node], self.right[node]), node)
            depths[start:start + len(block)] = self.leaf_depth[node].sum(axis=1)
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
    return {"trees": trees, "denominator": float(denominator)}
