"""Training and cross-validation of the sentiment model (pure: examples in, weights and scores out).

Multinomial logistic regression with L2, balanced class weights (the labels are mostly neutral and
macro-F1 weighs the classes alike), fitted by full-batch Adam on a sparse design held as index
arrays: numpy only, a few seconds for ten thousand texts. N-grams seen in fewer than
``min_count`` texts get no weight, which keeps the model file small and the model from learning
one-off headlines by heart.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from agents.sentiment import DENSE, LABELS, LinearModel, Scorer, features, macro_f1


@dataclass(frozen=True, slots=True)
class Example:
    text: str
    label: str  # one of LABELS
    source: str  # data set name, for per-set reports
    weight: float = 1.0


def fit(
    examples: Sequence[Example],
    lexicon: Mapping[str, tuple[float, float]],
    *,
    l2: float = 3e-4,
    min_count: int = 2,
    epochs: int = 250,
    lr: float = 0.1,
    prune_below: float = 0.05,
    dense_l2_factor: float = 0.0,
) -> LinearModel:
    """Fit a :class:`LinearModel`. ``l2`` is per example (the loss is a mean) and holds the n-gram
    weights; the five dense lexicon weights get ``dense_l2_factor`` times it (none by default), so
    regularisation leans the model on the lexicons rather than on n-grams of the training
    headlines, which is what carries to other text. N-grams whose largest class weight is under
    ``prune_below`` times the largest of all are dropped from the file."""
    feats = [features(e.text, lexicon) for e in examples]
    df: Counter[str] = Counter()
    for grams, _ in feats:
        df.update(set(grams))
    vocab = {g: i for i, g in enumerate(sorted(g for g, c in df.items() if c >= min_count))}
    v, d, n = len(vocab), len(DENSE), len(examples)
    rows, cols = [], []
    for r, (grams, _) in enumerate(feats):
        for g in set(grams):
            j = vocab.get(g)
            if j is not None:
                rows.append(r)
                cols.append(j)
    row = np.asarray(rows, dtype=np.int64)
    col = np.asarray(cols, dtype=np.int64)
    dense = np.asarray([x for _, x in feats], dtype=np.float64).reshape(n, d)
    y = np.asarray([LABELS.index(e.label) for e in examples])
    onehot = np.eye(3)[y]
    ew = np.asarray([e.weight for e in examples], dtype=np.float64)
    counts = np.bincount(y, weights=ew, minlength=3)  # weighted: a down-weighted set moves the balance as little as its loss
    class_w = ew.sum() / (3.0 * np.maximum(counts, 1e-9))
    sw = class_w[y] * ew
    sw = sw / sw.sum()

    # Parameters: n-gram weights (v x 3), dense weights (d x 3), bias (3).
    params = [np.zeros((v, 3)), np.zeros((d, 3)), np.zeros(3)]
    m = [np.zeros_like(p) for p in params]
    s = [np.zeros_like(p) for p in params]
    b1, b2, eps = 0.9, 0.999, 1e-8
    for step in range(1, epochs + 1):
        wg, wd, bias = params
        logits = dense @ wd + bias
        for c in range(3):
            logits[:, c] += np.bincount(row, weights=wg[col, c], minlength=n)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) * sw[:, None]
        grad_g = np.stack([np.bincount(col, weights=g[row, c], minlength=v) for c in range(3)], axis=1) + l2 * wg
        grad_d = dense.T @ g + l2 * dense_l2_factor * wd
        grad_b = g.sum(axis=0)
        for i, grad in enumerate((grad_g, grad_d, grad_b)):
            m[i] = b1 * m[i] + (1 - b1) * grad
            s[i] = b2 * s[i] + (1 - b2) * grad * grad
            params[i] = params[i] - lr * (m[i] / (1 - b1**step)) / (np.sqrt(s[i] / (1 - b2**step)) + eps)
    wg, wd, bias = params
    # Centre each row: softmax is unchanged and the file holds smaller numbers.
    wg = wg - wg.mean(axis=1, keepdims=True)
    keep = np.abs(wg).max(axis=1) >= prune_below * np.abs(wg).max()
    inv = {i: gname for gname, i in vocab.items()}
    grams = {inv[i]: (float(wg[i, 0]), float(wg[i, 1]), float(wg[i, 2])) for i in np.flatnonzero(keep)}
    return LinearModel(
        grams=grams,
        dense=[(float(r[0]), float(r[1]), float(r[2])) for r in wd],
        bias=(float(bias[0]), float(bias[1]), float(bias[2])),
        meta={"examples": n, "vocabulary": len(grams), "l2": l2, "min_count": min_count, "epochs": epochs},
    )


def evaluate(model: LinearModel, lexicon: Mapping[str, tuple[float, float]], examples: Sequence[Example]) -> float:
    scorer = Scorer(model, lexicon)
    return macro_f1([e.label for e in examples], [scorer.score(e.text).label for e in examples])


def cross_validate(
    examples: Sequence[Example], lexicon: Mapping[str, tuple[float, float]], *, folds: int = 5, seed: int = 7, **fit_args: float
) -> dict[str, float]:
    """K-fold macro-F1 of training on all sets, reported per set of the held-out texts."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    truth: dict[str, list[str]] = {}
    pred: dict[str, list[str]] = {}
    for k in range(folds):
        held = set(order[k::folds])
        model = fit([e for i, e in enumerate(examples) if i not in held], lexicon, **fit_args)
        scorer = Scorer(model, lexicon)
        for i in sorted(held):
            e = examples[i]
            truth.setdefault(e.source, []).append(e.label)
            pred.setdefault(e.source, []).append(scorer.score(e.text).label)
    return {name: macro_f1(truth[name], pred[name]) for name in sorted(truth)}


def cross_dataset(
    examples: Sequence[Example], lexicon: Mapping[str, tuple[float, float]], **fit_args: float
) -> dict[tuple[str, str], float]:
    """Train on one set, test on each other: how far the model carries to text it has not seen."""
    sets = sorted({e.source for e in examples})
    out: dict[tuple[str, str], float] = {}
    for train in sets:
        model = fit([e for e in examples if e.source == train], lexicon, **fit_args)
        for test in sets:
            if test != train:
                out[(train, test)] = evaluate(model, lexicon, [e for e in examples if e.source == test])
    return out
