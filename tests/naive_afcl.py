"""An independent, deliberately naive AFCL: plain Python loops over anchors and pairs.

Written straight from method.md section 1 and sharing no code with ``asymcl.losses``; the tests of
every implementation compare against it. Speed is irrelevant (use it on batches of tens of rows).

    A(i) = every index but i; P(i) = positives of i in A(i); Q(i) = A(i) minus P(i)
    p_ij = exp(z_i.z_j / tau) / sum_{a in A(i)} exp(z_i.z_a / tau)
    pos_i = - sum_{p in P(i)} (1 - p_ip)^gamma log p_ip
    neg_i = - sum_{q in Q(i)} log(1 - p_iq)
    AFCL = mean_i [ w_pos(i) pos_i + eta w_neg(i) neg_i ]
    "batch": w_pos = w_neg = 1/N;  "pairs": w_pos = 1/|P(i)|, w_neg = 1/|Q(i)| (empty set -> 0)

Reference rows (``n_anchors`` < number of rows): only the first ``n_anchors`` rows are anchors; the
others are in every anchor's A(i) (hence in P(i) or Q(i)) but are never anchors; N is ``n_anchors``
(in the mean and in the "batch" weights).

``naive_afcl`` computes in float64 by default; ``exact=True`` computes in 60-digit decimal
arithmetic (from the same float64 inputs), which stays exact when p_ij is within 1e-16 of 1
(tiny temperatures, near-duplicate rows), where float64 ``1 - p`` would round to 0.
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Sequence


def _to_rows(features_2d) -> list[list[float]]:
    if hasattr(features_2d, "detach"):  # a torch tensor
        features_2d = features_2d.detach().cpu().double().tolist()
    elif hasattr(features_2d, "tolist"):  # a numpy array
        features_2d = features_2d.tolist()
    return [[float(v) for v in row] for row in features_2d]


def _to_bool_matrix(mask_2d) -> list[list[bool]]:
    if hasattr(mask_2d, "detach"):
        mask_2d = mask_2d.detach().cpu().tolist()
    elif hasattr(mask_2d, "tolist"):
        mask_2d = mask_2d.tolist()
    return [[bool(v) for v in row] for row in mask_2d]


def l2_normalize_rows(features_2d) -> list[list[float]]:
    """Each row divided by its Euclidean norm (float64)."""
    rows = _to_rows(features_2d)
    return [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in rows]


def naive_afcl(
    features_2d,
    pos_mask_2d,
    gamma: float,
    eta: float,
    temperature: float,
    normalization: str,
    *,
    exact: bool = False,
    n_anchors: int | None = None,
) -> float:
    """AFCL of M rows z_i (used as given: normalise them first if the loss should).

    Args:
        features_2d: M rows of D numbers (nested lists, numpy array or torch tensor).
        pos_mask_2d: M x M booleans, True where j is a positive of i; the diagonal is ignored.
        gamma, eta, temperature, normalization: as in method.md ("batch" or "pairs").
        exact: compute in 60-digit decimal arithmetic instead of float64.
        n_anchors: the first n_anchors rows are the anchors (default: all M); the rest are
            reference rows, contrasted with every anchor but never anchors themselves.
    """
    rows = _to_rows(features_2d)
    positive = _to_bool_matrix(pos_mask_2d)
    n = len(rows)
    n_anchors = n if n_anchors is None else n_anchors
    assert n >= 2 and 1 <= n_anchors <= n and len(positive) == n and all(len(r) == n for r in positive)
    assert normalization in ("batch", "pairs")

    if exact:
        with decimal.localcontext(decimal.Context(prec=60)):
            return float(_afcl_loops(rows, positive, gamma, eta, temperature, normalization, _DECIMAL, n_anchors))
    return _afcl_loops(rows, positive, gamma, eta, temperature, normalization, _FLOAT, n_anchors)


class _Arithmetic:
    """The few operations the loops need, in float64 or in decimal."""

    def __init__(self, number, exp, log):
        self.number, self.exp, self.log = number, exp, log

    def power(self, base, exponent: float):
        # (1 - p)^gamma with the convention 0^0 = 1 (gamma = 0 means no focal weight)
        if exponent == 0:
            return self.number(1)
        if base == 0:
            return self.number(0)
        return base ** self.number(exponent)


_FLOAT = _Arithmetic(float, math.exp, math.log)
_DECIMAL = _Arithmetic(decimal.Decimal, lambda x: x.exp(), lambda x: x.ln())


def _afcl_loops(rows, positive, gamma, eta, temperature, normalization, arith: _Arithmetic, n_anchors):
    number, exp, log, power = arith.number, arith.exp, arith.log, arith.power
    n = len(rows)
    zero, one = number(0), number(1)
    total = zero
    for i in range(n_anchors):
        others = [a for a in range(n) if a != i]
        # similarity of i with every other row, divided by the temperature
        similarity = {}
        for a in others:
            dot = zero
            for zi, za in zip(rows[i], rows[a], strict=True):
                dot = dot + number(zi) * number(za)
            similarity[a] = dot / number(temperature)
        # p_ij with the usual shift by the largest similarity (does not change p)
        largest = max(similarity.values())
        denominator = zero
        for a in others:
            denominator = denominator + exp(similarity[a] - largest)
        p = {j: exp(similarity[j] - largest) / denominator for j in others}

        positives = [j for j in others if positive[i][j]]
        negatives = [j for j in others if not positive[i][j]]

        pos_i = zero
        for j in positives:
            pos_i = pos_i - power(one - p[j], gamma) * log(p[j])
        neg_i = zero
        for j in negatives:
            neg_i = neg_i - log(one - p[j])

        if normalization == "batch":
            w_pos = one / number(n_anchors)
            w_neg = one / number(n_anchors)
        else:
            w_pos = one / number(len(positives)) if positives else zero
            w_neg = one / number(len(negatives)) if negatives else zero

        anchor_loss = w_pos * pos_i
        if eta != 0:  # eta = 0 removes the term (also where it would be infinite)
            anchor_loss = anchor_loss + number(eta) * w_neg * neg_i
        total = total + anchor_loss
    return total / number(n_anchors)


def row_positive_mask(
    n_images: int,
    n_views: int,
    *,
    labels: Sequence[int] | None = None,
    image_mask=None,
) -> list[list[bool]]:
    """Positive mask over rows for V views per image, rows ordered image-major (row = n * V + v).

    labels: rows of the same class are positives. image_mask: image-level N x N mask, where all
    views of one image are additionally positives of each other. Neither: only the other views
    of the same image are positives.
    """
    image_of = [r // n_views for r in range(n_images * n_views)]
    if labels is not None:
        labels = [int(v) for v in (labels.tolist() if hasattr(labels, "tolist") else labels)]
    if image_mask is not None:
        image_mask = _to_bool_matrix(image_mask)
    n_rows = n_images * n_views
    result = [[False] * n_rows for _ in range(n_rows)]
    for r in range(n_rows):
        for c in range(n_rows):
            if r == c:
                continue
            same_image = image_of[r] == image_of[c]
            if labels is not None:
                result[r][c] = labels[image_of[r]] == labels[image_of[c]]
            elif image_mask is not None:
                result[r][c] = same_image or image_mask[image_of[r]][image_of[c]]
            else:
                result[r][c] = same_image
    return result


def naive_afcl_from_batch(
    features,
    labels=None,
    *,
    mask=None,
    gamma: float = 0.0,
    eta: float = 0.0,
    temperature: float = 0.07,
    normalization: str = "batch",
    normalize: bool = True,
    exact: bool = False,
    ref_features=None,
    ref_labels=None,
) -> float:
    """The naive loss with the public API's conventions: features (N, D) or (N, V, D) tensor;
    optional reference rows ref_features (K, D) or (K, V', D) with ref_labels (K,) (needs labels)."""
    shape = tuple(features.shape)
    n_images, n_views = (shape[0], 1) if len(shape) == 2 else (shape[0], shape[1])
    flat = features.detach().double().reshape(n_images * n_views, shape[-1])
    rows = l2_normalize_rows(flat) if normalize else _to_rows(flat)
    positive = row_positive_mask(n_images, n_views, labels=labels, image_mask=mask)
    if ref_features is None:
        return naive_afcl(rows, positive, gamma, eta, temperature, normalization, exact=exact)
    assert labels is not None and mask is None
    ref_shape = tuple(ref_features.shape)
    ref_views = 1 if len(ref_shape) == 2 else ref_shape[1]
    ref_flat = ref_features.detach().double().reshape(-1, ref_shape[-1])
    rows = rows + (l2_normalize_rows(ref_flat) if normalize else _to_rows(ref_flat))
    row_labels = [int(labels[r // n_views]) for r in range(n_images * n_views)]
    row_labels += [int(ref_labels[r // ref_views]) for r in range(ref_shape[0] * ref_views)]
    everything = [[r != c and row_labels[r] == row_labels[c] for c in range(len(rows))] for r in range(len(rows))]
    return naive_afcl(
        rows, everything, gamma, eta, temperature, normalization, exact=exact, n_anchors=n_images * n_views
    )
