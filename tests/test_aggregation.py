"""From per-pair scores to the pooled score: every estimator targets the value
``exact=True`` computes (the mean over every ordered same-class pair), also when
classes differ in size; and results serialise without losing anything."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import fastconvex as fc


def _unequal_classes(seed: int = 0):
    """A tight class of 300 points and a diffuse one of 40 in 5-D: class scores
    far apart, population weights 89 700 : 1 560."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(size=(300, 5)) * 0.3, rng.normal(size=(40, 5)) * 1.5])
    y = np.r_[np.zeros(300, int), np.ones(40, int)]
    return x, y


def test_pooled_score_weights_classes_by_their_population_of_pairs():
    """Hand formula: class 1 (1 560 pairs) is scored whole, class 0 (89 700)
    is sampled; the pooled score is sum_c M_c mean_c / sum_c M_c and its
    standard error comes from class 0 alone, scaled by W_0."""
    x, y = _unequal_classes()
    r = fc.graph_convexity(x, y, k=5, pairs=2000, seed=1)
    assert r.n_pairs == {0: 2000, 1: 1560}
    m0, m1 = 300 * 299, 40 * 39
    w0, w1 = m0 / (m0 + m1), m1 / (m0 + m1)
    assert math.isclose(r.score, w0 * r.per_class[0] + w1 * r.per_class[1], rel_tol=1e-12)
    assert r.per_class_stderr[1] == 0.0  # scored whole
    assert math.isclose(r.stderr, w0 * r.per_class_stderr[0], rel_tol=1e-12)
    # the mean of the scored pairs would be a different number here
    pooled_sample = (2000 * r.per_class[0] + 1560 * r.per_class[1]) / 3560
    assert abs(pooled_sample - r.score) > 10 * r.stderr


@pytest.mark.parametrize("estimator", [{"pairs": 400}, {"sources": 6}])
def test_sampled_estimators_are_unbiased_for_the_exact_score(estimator):
    """Property over seeds: the mean of 16 sampled estimates lies within 4
    standard errors of the exact score (the sampled-count weighting missed it
    by about 0.15, dozens of standard errors)."""
    x, y = _unequal_classes(seed=3)
    exact = fc.graph_convexity(x, y, k=5, exact=True)
    runs = [fc.graph_convexity(x, y, k=5, seed=s, **estimator) for s in range(16)]
    mean = np.mean([r.score for r in runs])
    se_of_mean = math.sqrt(np.mean([r.stderr**2 for r in runs]) / len(runs))
    assert se_of_mean > 0
    assert abs(mean - exact.score) <= 4 * se_of_mean, (mean, exact.score, se_of_mean)
    assert abs(exact.score - exact.macro) > 0.05  # the classes do differ: the test can fail


def test_pooled_score_is_the_plain_mean_when_every_pair_is_scored():
    """With every pair scored, the pooled score is the plain mean over pairs
    whatever the class sizes (pairs census, sources = class size, exact)."""
    x, y = _unequal_classes(seed=5)
    x, y = x[::4], y[::4]  # 75 + 10 points
    exact = fc.graph_convexity(x, y, k=4, exact=True)
    census = fc.graph_convexity(x, y, k=4, pairs=75 * 74)
    everyone = fc.graph_convexity(x, y, k=4, sources=75)
    total = sum(exact.n_pairs.values())
    plain = sum(exact.per_class[c] * exact.n_pairs[c] for c in exact.n_pairs) / total
    for r in (exact, census, everyone):
        assert math.isclose(r.score, plain, rel_tol=1e-12)
        assert r.stderr == 0.0


def _strict_json(path):
    """Parse as strict JSON: NaN / Infinity are not JSON and fail here."""

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    with open(path, encoding="utf-8") as fh:
        return json.load(fh, parse_constant=refuse)


@pytest.mark.parametrize("estimator", [{"pairs": 1}, {"sources": 1}])
def test_json_is_valid_when_a_standard_error_cannot_be_estimated(tmp_path, estimator):
    """One sampled pair or source per class: no variance estimate, so the
    standard errors are NaN in Python and null in the JSON file."""
    x, y = _unequal_classes()
    r = fc.layer_scores([x, 2 * x], y, k=4, **estimator)
    assert math.isnan(r.stderr[0]) and math.isnan(r.layers[0].macro_stderr)
    r.to_json(tmp_path / "s.json")
    d = _strict_json(tmp_path / "s.json")
    assert d["stderr"] == [None, None]
    assert d["layers"][0]["stderr"] is None and d["layers"][0]["macro_stderr"] is None
    assert d["scores"] == [pytest.approx(v) for v in r.scores]


def test_labels_with_the_same_string_form_keep_their_own_keys(tmp_path):
    """1 and "1" (and None and "None") are different classes; their JSON keys
    must differ too, or one class silently replaces the other."""
    x, _ = _unequal_classes()
    x = x[:60]
    labels = [[1, "1", 2][i % 3] for i in range(60)]
    r = fc.graph_convexity(x, labels, k=3)
    d = r.to_dict()
    assert len(d["n_pairs"]) == 3 and sum(d["n_pairs"].values()) == r.total_pairs
    assert d["n_pairs"] == {"1": r.n_pairs[1], "'1'": r.n_pairs["1"], "2": r.n_pairs[2]}
    labels = [[None, "None"][i % 2] for i in range(60)]
    ls = fc.layer_scores([x], labels, k=3)
    ls.to_json(tmp_path / "n.json")
    d = _strict_json(tmp_path / "n.json")
    assert d["class_keys"] == ["None", "'None'"] or d["class_keys"] == ["'None'", "None"]
    assert set(d["layers"][0]["per_class"]) == set(d["class_keys"])
    # ordinary labels keep their plain string keys
    plain = fc.graph_convexity(x, [i % 2 for i in range(60)], k=3).to_dict()
    assert set(plain["per_class"]) == {"0", "1"}
