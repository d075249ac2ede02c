"""The fine-tuning experiment's bookkeeping: which cuts, which context, what is
reused, and what the summary claims (against hand-computed values and scipy)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from fastconvex.demo.config import Dataset, FinetuneSettings, finetune_settings
from fastconvex.demo.finetune import context_seconds_for, keeps_for, unit_key
from fastconvex.demo.finetune_report import format_finetune, per_keep, summarize


def _rows(acc: dict[int, list[float]], params: dict[int, int], infer: dict[int, float]) -> list[dict]:
    return [
        {
            "model": "m",
            "keep": k,
            "seed": s,
            "accuracy": a,
            "train_seconds": 10.0 * k + s,
            "infer_ms": infer[k],
            "params": params[k],
            "n_train": 8,
            "n_eval": 4,
        }
        for k, accs in acc.items()
        for s, a in enumerate(accs)
    ]


def _entry(scores, acc, rule_keep=2, n_blocks=4):
    params = {k: 1000 * (k + 1) for k in range(1, n_blocks + 1)}
    infer = {k: 2.0 * k for k in range(1, n_blocks + 1)}
    return {
        "model": "m",
        "n_blocks": n_blocks,
        "context_seconds": 2.0,
        "scores": scores,
        "stderr": [0.0] * len(scores),
        "rule_keep": rule_keep,
        "keeps": sorted(acc),
        "rows": _rows(acc, params, infer),
        "settings": {"epochs": 1, "lr": 1e-3, "seeds": [0, 1]},
    }


def test_keeps_always_hold_the_full_model_and_the_rule_cut():
    assert keeps_for("all", 4, 2) == [4, 3, 2, 1]
    assert keeps_for("spread", 6, 5) == [6, 5, 4, 3, 1]
    assert keeps_for("auto", 6, 2) == [6, 4, 3, 2, 1]
    assert keeps_for("auto", 4, 2) == keeps_for("all", 4, 2)
    assert keeps_for("spread", 2, 1) == [2, 1]
    assert keeps_for("1,3", 6, 2) == [6, 3, 2, 1]
    with pytest.raises(ValueError, match=r"\[7\] not in 1..6"):
        keeps_for("1,7", 6, 2)
    for spec in ("two", "0,2", ""):
        with pytest.raises(ValueError, match="--keeps: expected"):
            keeps_for(spec, 6, 2)


def test_context_covers_the_longest_clip_or_refuses():
    ds = Dataset("t", [np.zeros(16000 * 2 + 1, np.float32), np.zeros(8000, np.float32)], ["a", "b"], ["1", "2"])
    assert context_seconds_for(ds, None) == 3.0  # 2.0000625 s rounded up to whole seconds
    assert context_seconds_for(ds, 3.0) == 3.0
    with pytest.raises(ValueError, match="longer than the 2 s context"):
        context_seconds_for(ds, 2.0)


def test_summary_against_hand_computed_values_and_scipy():
    scores = [0.1, 0.5, 0.9, 0.7, 0.6]  # layer 0..4; the rule cut keeps 2
    acc = {4: [0.8, 0.9], 3: [0.7, 0.8], 2: [0.9, 0.95], 1: [0.5, 0.6]}
    entry = _entry(scores, acc)
    s = summarize(entry)
    pk = s["per_keep"]
    assert pk["2"]["accuracy_mean"] == pytest.approx(0.925)
    assert pk["2"]["accuracy_sd"] == pytest.approx(np.std([0.9, 0.95], ddof=1))
    assert pk["1"]["train_seconds"] == pytest.approx(10.5)
    keeps = [1, 2, 3, 4]
    ref = spearmanr([scores[k] for k in keeps], [np.mean(acc[k]) for k in keeps])
    assert s["spearman"] == pytest.approx(ref.statistic) and s["spearman_p"] == pytest.approx(ref.pvalue)
    f = s["full_vs_cut"]
    assert f["keep"] == 2
    assert f["accuracy_diff"] == pytest.approx(0.925 - 0.85)
    assert f["params_saved"] == pytest.approx(1 - 3000 / 5000)
    assert f["latency_saved"] == pytest.approx(1 - 4.0 / 8.0)
    assert f["train_time_saved"] == pytest.approx(1 - 20.5 / 40.5)
    assert s["best_keep"] == 2
    text = format_finetune({"tasks": {"words": {"finetune_models": {"m": {**entry, "summary": s}}}}})
    assert "<- convexity cut" in text and "+7.5 points vs full" in text and "40% fewer parameters" in text


def test_summary_has_no_correlation_from_two_cuts_or_flat_accuracy():
    s = summarize(_entry([0.1, 0.5, 0.9, 0.7, 0.6], {4: [0.8], 2: [0.9]}))
    assert s["spearman"] is None and s["n_cuts"] == 2
    assert per_keep(_entry([0.1] * 5, {4: [0.8]})["rows"])[4]["accuracy_sd"] == 0.0
    s = summarize(_entry([0.1, 0.5, 0.9, 0.7, 0.6], {4: [0.8], 3: [0.8], 2: [0.8]}))
    assert s["spearman"] is None


def test_unit_key_changes_with_data_settings_and_split():
    a = [np.linspace(0, 1, 100, dtype=np.float32), np.ones(50, np.float32)]
    ds = Dataset("t", a, ["x", "y"], ["1", "2"])
    split = (np.array([0]), np.array([1]))
    st = FinetuneSettings()
    key = unit_key("tiny.en", ds, split, st, {"k": 10})
    assert key == unit_key("tiny.en", Dataset("t", [x.copy() for x in a], ["x", "y"], ["1", "2"]), split, st, {"k": 10})
    b = [a[0].copy(), a[1].copy()]
    b[1][3] = 0.5
    changed = [
        unit_key("base", ds, split, st, {"k": 10}),
        unit_key("tiny.en", Dataset("t", b, ["x", "y"], ["1", "2"]), split, st, {"k": 10}),
        unit_key("tiny.en", ds, (np.array([1]), np.array([0])), st, {"k": 10}),
        unit_key("tiny.en", ds, split, FinetuneSettings(epochs=2.0), {"k": 10}),
        unit_key("tiny.en", ds, split, st, {"k": 5}),
    ]
    assert key not in changed and len(set(changed)) == len(changed)


def test_budget_defaults_and_bad_models():
    quick = finetune_settings(True)
    full = finetune_settings(False)
    assert quick.models == ("tiny.en",) and quick.seeds == (0,)
    assert full.models == ("tiny.en", "base") and len(full.seeds) == 3
    assert finetune_settings(False, seeds=(4,), epochs=None).seeds == (4,)
    with pytest.raises(ValueError, match="choose among tiny.en, base"):
        finetune_settings(True, models=("large",))
    with pytest.raises(ValueError, match="at least one seed"):
        finetune_settings(True, seeds=())
    for keeps in ("1,x", "0,2", ""):
        with pytest.raises(ValueError, match="--keeps: expected"):
            finetune_settings(True, keeps=keeps)
    with pytest.raises(ValueError, match="whole number of seconds"):
        finetune_settings(True, context_seconds=2.5)


def test_cli_refuses_finetune_flags_without_finetune(capsys):
    from fastconvex.cli import main

    assert main(["demo", "--epochs", "2", "--seeds", "0,1", "--no-fetch"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--seeds, --epochs applies to --finetune only" in err[0]
    assert main(["demo", "--finetune", "--seeds", "0,x", "--no-fetch"]) == 2
    assert "--seeds: expected integers" in capsys.readouterr().err


def test_cli_refuses_no_task_before_loading_anything(capsys):
    from fastconvex.cli import main

    assert main(["demo", "--tasks", " , ", "--no-fetch"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        (
            "fastconvex demo: error: tasks: give at least one of words, speakers, asterisk-speaker, "
            "asterisk-language, asterisk-language-unseen"
        )
    ]


def test_the_three_cut_rules_against_hand_computed_cuts():
    import fastconvex as fc
    from fastconvex.demo.finetune import PLATEAU_RATIO, plateau_keep, rule_keeps

    assert PLATEAU_RATIO == 0.95  # fixed before any result was seen; docs/demo.md says so
    #            h: 0     1     2     3     4
    scores = [0.20, 0.50, 0.79, 0.80, 0.70]
    assert plateau_keep(scores, 4) == 2  # 0.79 >= 0.95 * 0.80 = 0.76; 0.50 is not
    assert plateau_keep(scores, 4, ratio=1.0) == 3  # the argmax
    assert plateau_keep([0.9, 0.1, 0.2], 2) == 1  # no block near the input's: one block, as argmax keeps
    assert plateau_keep([0.5, 0.1, 0.49, 0.48], 3) == 2  # the first block reaching 0.475
    ls = fc.LayerScores(
        scores=np.array(scores),
        stderr=np.array([0.0, 0.01, 0.02, 0.02, 0.01]),
        classes=[],
        per_class=np.zeros((5, 0)),
        layers=[],
    )
    # 1se: the shallowest layer within one s.e. (0.02) of the best (0.80): 0.79 at h = 2
    assert rule_keeps(ls, 4) == {"argmax": 3, "1se": 2, "plateau": 2}


def test_summary_reports_each_rules_cut_and_the_trajectory():
    entry = _entry([0.1, 0.3, 0.6, 0.5, 0.4], {4: [0.80, 0.82], 3: [0.78, 0.80], 2: [0.81, 0.81], 1: [0.5, 0.6]})
    entry["cut_rules"] = {"argmax": 2, "1se": 2, "plateau": 3}
    entry["plateau_ratio"] = 0.95
    entry["trajectory"] = {
        "probe_clips": 20,
        "layers": [0, 1, 2, 3, 4],
        "steps": [0, 5, 10],
        "epochs": [0.0, 1.0, 2.0],
        "scores": [[0.1, 0.3, 0.6, 0.5, 0.4], [0.1, 0.3, 0.5, 0.6, 0.6], [0.1, 0.2, 0.5, 0.7, 0.9]],
        "stderr": [[0.0] * 5] * 3,
    }
    s = summarize(entry)
    full = np.mean([0.80, 0.82])
    assert s["cut_rules"]["plateau"]["keep"] == 3
    assert s["cut_rules"]["plateau"]["accuracy"] == pytest.approx(0.79)
    assert s["cut_rules"]["plateau"]["accuracy_diff"] == pytest.approx(0.79 - full)
    assert s["cut_rules"]["argmax"]["params_saved"] == pytest.approx(1 - 3000 / 5000)
    t = s["trajectory"]
    assert t["last_layers"] == [3, 4]  # the deeper half of hidden states 0..4
    assert t["change"] == pytest.approx([0.0, -0.1, -0.1, 0.2, 0.5])
    assert t["last_layers_change"] == pytest.approx(0.35) and t["rose_in_last_layers"] is True
    entry["summary"] = s
    text = format_finetune({"tasks": {"words": {"finetune_models": {"m": entry}}}})
    assert "cut rules (pretrained convexity; plateau: the shallowest cut reaching 95% of the best): " in text
    assert "argmax keeps 2 (81.0%, 0.00 M params); 1se keeps 2 (81.0%, 0.00 M params); plateau keeps 3 (79.0%" in text
    assert "4:40.0->90.0; rose in the last layers (3, 4): yes (+35.0 points)" in text
    fell = dict(entry["trajectory"], scores=[[0.1, 0.3, 0.6, 0.5, 0.4], [0.1, 0.3, 0.6, 0.4, 0.3]])
    assert summarize({**entry, "trajectory": fell})["trajectory"]["rose_in_last_layers"] is False


def test_the_trajectory_figure_has_a_panel_per_tracked_run():
    pytest.importorskip("matplotlib")
    from fastconvex.demo.finetune_report import trajectory_figure

    entry = _entry([0.1, 0.3, 0.6], {2: [0.8], 1: [0.7]}, rule_keep=2, n_blocks=2)
    assert trajectory_figure({"tasks": {"words": {"finetune_models": {"m": entry}}}}) is None
    entry["trajectory"] = {
        "probe_clips": 4,
        "layers": [0, 1, 2],
        "steps": [0, 3],
        "epochs": [0.0, 1.0],
        "scores": [[0.1, 0.3, 0.6], [0.2, 0.4, 0.9]],
        "stderr": [[0.0] * 3] * 2,
    }
    fig = trajectory_figure({"tasks": {"words": {"finetune_models": {"m": entry}}}})
    lines = fig.axes[0].get_lines()
    assert len(lines) == 3 and list(lines[2].get_ydata()) == pytest.approx([60.0, 90.0])
