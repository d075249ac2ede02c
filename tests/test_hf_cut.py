"""choose_cut: the paper's rule (hidden state h => keep h blocks) and its refusals."""

from __future__ import annotations

import numpy as np
import pytest

import fastconvex as fc
from fastconvex.hf import choose_cut

pytestmark = pytest.mark.hf


def test_argmax_is_the_number_of_blocks_to_keep():
    assert choose_cut([0.2, 0.5, 0.7, 0.6, 0.3]) == 2
    assert choose_cut(np.array([0.1, 0.9])) == 1
    assert choose_cut([0.1, 0.3, 0.3, 0.2]) == 1  # the first on ties: the shorter model
    assert choose_cut([0.4, 0.4, 0.2]) == 1  # a block tying with the input wins over the input


def test_layer_scores_object():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    centres = rng.normal(size=(3, 4)) * 3
    clean = centres[labels] + rng.normal(size=(60, 4))
    layers = [clean + rng.normal(size=clean.shape) * s for s in (3.0, 1.5, 0.0, 2.5)]
    scores = fc.layer_scores(layers, labels, exact=True)
    assert choose_cut(scores) == scores.best_layer == int(np.argmax(scores.scores))
    assert choose_cut(scores) == 2


def test_refuses_the_input_layer():
    with pytest.raises(ValueError, match="most convex layer is 0, the transformer's input"):
        choose_cut([0.9, 0.5, 0.7])


def test_one_standard_error_rule():
    scores = [0.2, 0.55, 0.6, 0.62, 0.4]
    assert choose_cut(scores, "1se", stderr=[0.01, 0.01, 0.01, 0.03, 0.01]) == 2
    assert choose_cut(scores, "1se", stderr=[0.0] * 5) == 3
    assert choose_cut(scores, "argmax") == 3
    with pytest.raises(ValueError, match='rule="1se" needs standard errors'):
        choose_cut(scores, "1se")
    with pytest.raises(ValueError, match="most convex layer is 0"):
        choose_cut([0.9, 0.5, 0.7], "1se", stderr=[0.01] * 3)


def test_bad_scores_are_refused():
    with pytest.raises(ValueError, match="non-finite value at layer 1"):
        choose_cut([0.1, np.nan, 0.2])
    with pytest.raises(ValueError, match="scores must be 1-D"):
        choose_cut([[0.1, 0.2], [0.3, 0.4]])
    with pytest.raises(ValueError, match="scores must be 1-D"):
        choose_cut([0.5])
    with pytest.raises(ValueError, match='rule must be "argmax" or "1se"'):
        choose_cut([0.1, 0.2], "max")
    with pytest.raises(ValueError, match="stderr has shape"):
        choose_cut([0.1, 0.2], "1se", stderr=[0.1])
    with pytest.raises(TypeError, match="scores must be a LayerScores"):
        choose_cut(object())
