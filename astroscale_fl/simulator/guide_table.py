"""Guide tables: O(1)-expected inverse-CDF sampling of many discrete distributions at once.

The sampler draws its stage-1 cells and stage-2 sky pixels with them instead of binary searches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


# ---- discrete sampling: guide tables ----
@dataclass
class GuideTable:
    """O(1)-expected inverse-CDF sampling of many discrete distributions (Chen & Asau 1974).

    ``cum[r]`` is row r's normalised cumulative distribution (float32, last entry exactly 1);
    ``guide[r, k]`` is the first index whose cumulative exceeds k / G.  A draw looks up the guide
    entry of its uniform and steps forwards while the cumulative is <= u; with G = K guide
    entries that is < 1 step on average.  The result equals ``searchsorted(cum[r], u, "right")``.
    Steps jump over runs of equal cumulatives (zero-probability entries, e.g. pixels outside a
    footprint) through ``nxt[r, i]``, the first index after i whose cumulative is larger.
    """

    cum: np.ndarray  # (R, K) float32
    guide: np.ndarray  # (R, G) int16 / int32
    q: np.ndarray  # (G,) float32 k / G, exactly as used to build ``guide``
    nxt: np.ndarray  # (R, K) int16 / int32: next index with a larger cumulative

    @classmethod
    def build(cls, cum: np.ndarray, n_guide: int | None = None) -> "GuideTable":
        cum = np.atleast_2d(np.asarray(cum, dtype=np.float64))
        R, K = cum.shape
        G = K if n_guide is None else n_guide
        c32 = cum.astype(np.float32)
        c32[:, -1] = 1.0
        q = np.arange(G, dtype=np.float32) / np.float32(G)
        itype = np.int16 if K < 2**15 else np.int32
        # guide[r, k] = #{i : cum[r, i] <= q[k]}, by counting: each entry lands at the first k with
        # q[k] >= cum (ceil(cum G), corrected for q's float32 rounding), then a running sum over k
        q_ext = np.append(q, np.float32(np.inf))
        first = np.clip(np.ceil(c32.astype(np.float64) * G), 0, G).astype(np.intp)
        for _ in range(2):
            first += q_ext.take(first) < c32
            first -= (first > 0) & (q_ext.take(np.maximum(first - 1, 0)) >= c32)
        counts = np.bincount((first + (G + 1) * np.arange(R)[:, None]).ravel(), minlength=R * (G + 1))
        guide = np.minimum(np.cumsum(counts.reshape(R, G + 1), axis=1)[:, :G], K - 1).astype(itype)
        # nxt[r, i]: 1 + the first p >= i with cum[p + 1] > cum[p] (a suffix minimum), else K - 1
        rise = np.where(c32[:, 1:] > c32[:, :-1], np.arange(1, K), K - 1)
        nxt = np.empty((R, K), dtype=itype)
        nxt[:, :-1] = np.minimum.accumulate(rise[:, ::-1], axis=1)[:, ::-1]
        nxt[:, -1] = K - 1
        return cls(c32, guide, q, nxt)

    def sample(self, u: np.ndarray, row: np.ndarray | int = 0, with_prob: bool = False):
        """Index drawn in row(s) ``row`` for float32 uniforms ``u`` in [0, 1).

        With ``with_prob``, also the probability with which that index was drawn: the float32
        difference of consecutive cumulatives, exact for uniforms on the 2^-24 grid.
        """
        R, K = self.cum.shape
        G = self.guide.shape[1]
        k = (u * np.float32(G)).astype(np.intp)
        np.minimum(k, G - 1, out=k)
        k -= self.q.take(k) > u  # u * G may round up to the next integer in float32
        if np.ndim(row) == 0:
            base = int(row) * K
            pos = self.guide[int(row)].take(k).astype(np.intp)
        else:
            base = row * K
            pos = self.guide.take(row * G + k).astype(np.intp)
        pos += base
        cum, nxt = self.cum.ravel(), self.nxt.ravel()
        act = np.flatnonzero(cum.take(pos) <= u)
        for _ in range(4):  # a few stragglers: step forwards, over equal cumulatives at once
            if not act.size:
                break
            p = nxt.take(pos.take(act)) + (base if np.ndim(base) == 0 else base.take(act))
            pos[act] = p
            act = act[cum.take(p) <= u.take(act)]
        if act.size:  # the rare long runs of tiny probabilities: bisect the rest of the row
            lo = pos.take(act)  # cum[lo] <= u < cum[row end] = 1
            hi = (base if np.ndim(base) == 0 else base.take(act)) + (K - 1)
            ua = u.take(act)
            for _ in range(int(np.ceil(np.log2(K))) + 1):
                mid = (lo + hi) >> 1
                above = cum.take(mid) > ua
                hi = np.where(above, mid, hi)
                lo = np.where(above, lo, mid)
            pos[act] = hi
        if not with_prob:
            return pos - base
        prob = cum.take(pos)
        first = pos == base
        prev = cum.take(np.maximum(pos - 1, 0))
        prev[first] = 0.0
        prob -= prev
        return pos - base, prob
