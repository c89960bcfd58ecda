"""Issue 21: the clinician's classifier says only what is true -- degenerate models marked NOT usable (and
refused by `predict` unless --force), intervals on the operating point, equal sensitivity/specificity,
prevalence-adjusted probabilities and PPV/NPV."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.fewshot.classifier import Calibration, Classifier, build_classifier, choose_operating_point
from engine.fewshot.classifier.operating import (adjust_to_prevalence, predictive_at, predictive_values, replicates,
                                                 with_intervals)
from engine.fewshot.classifier.usability import assess
from tests.fewshot.test_fewshot_classifier import _arrays


def _noisy(n_pos: int, n_neg: int, seed: int = 0):
    """Phantoms whose positives carry a faint blob: separable, but not perfectly (a real cut-off choice)."""
    rng = np.random.default_rng(seed)
    imgs = []
    for i in range(n_pos + n_neg):
        img = rng.uniform(0.2, 0.6, (48, 48)).astype(np.float32)
        if i < n_pos:
            y0, x0 = rng.integers(4, 30, 2)
            img[y0 : y0 + 14, x0 : x0 + 14] += 0.12
        imgs.append(np.clip(img, 0, 1))
    return imgs, np.r_[np.ones(n_pos), np.zeros(n_neg)]


@pytest.fixture(scope="module")
def built():
    imgs, y = _noisy(12, 11)
    clf, est = build_classifier(imgs, y, init="random", image_size=32, finding="pneumonia", n_bootstrap=200)
    return imgs, y, clf, est


# ------------------------------------------------------------------------------------------- degenerate models

def _constant(clf: Classifier) -> Classifier:
    """The built classifier made constant: zero head, Platt slope 0, constant CV probabilities."""
    head = torch.nn.Linear(clf.head.weight.shape[1], 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    cal = Calibration("platt", a=0.0, b=0.0866)
    cvp = np.full_like(clf.cv_probs, float(cal(np.zeros(1))[0]))
    op = choose_operating_point(np.tile(clf.cv_labels, cvp.shape[0]), cvp.ravel(), "youden")
    return Classifier(init=clf.init, arch=clf.arch, fingerprint=clf.fingerprint, mean=clf.mean, std=clf.std,
                      image_size=clf.image_size, mode="probe", finding=clf.finding, threshold=op.threshold, head=head,
                      probe=None, counts=clf.counts, estimate=clf.estimate, calibration=cal, cv_probs=cvp,
                      cv_labels=clf.cv_labels, operating=op, familiarity=clf.familiarity)


def test_a_constant_output_classifier_is_marked_not_usable_and_predict_refuses_it(built, tmp_path, capsys):
    from engine.cli import main

    imgs, _, clf, _ = built
    const = _constant(clf)
    use = const.usability
    assert not use.usable and any("same probability to every image" in r for r in use.reasons)
    assert any("sensitivity 0%" in r or "specificity 0%" in r for r in use.reasons)
    assert "NOT USABLE" in use.sentence()
    path = const.save(tmp_path / "const.safetensors")
    loaded = Classifier.load(path)
    assert loaded.usability == use and loaded.metadata()["usability"]["usable"] is False
    from PIL import Image

    png = tmp_path / "x.png"
    Image.fromarray((imgs[0] * 255).astype(np.uint8)).save(png)
    assert main(["predict", "--model", str(path), str(png)]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "NOT USABLE" in err and "--force" in err
    assert main(["predict", "--model", str(path), str(png), "--force"]) == 0
    row = json.loads(capsys.readouterr().out.strip())
    assert row["usable"] is False and row["cv_sensitivity"] in (0.0, 1.0)


def test_assess_names_each_reason_and_passes_a_working_classifier(built):
    _, y, clf, est = built
    assert clf.usability.usable, clf.usability.reasons  # the faint blob is learnable
    from engine.fewshot.classifier import Estimate

    chance = Estimate(auc=0.58, ci_low=0.33, ci_high=0.83, n_positive=12, n_negative=11, folds=5, repeats=1)
    u = assess(clf.cv_probs, chance, clf.operating)
    assert not u.usable and len(u.reasons) == 1 and "0.33 to 0.83" in u.reasons[0] and "0.5" in u.reasons[0]


# ------------------------------------------------------------------------------------------- intervals

def test_operating_point_carries_intervals_that_contain_the_point(built):
    _, y, clf, _ = built
    for rule, target in (("youden", None), ("equal", None), ("sensitivity", 0.9), ("specificity", 0.9)):
        op = clf.operating_point(rule, target)
        for v, ci in ((op.threshold, op.threshold_ci), (op.sensitivity, op.sensitivity_ci),
                      (op.specificity, op.specificity_ci)):
            assert ci is not None and 0.0 <= ci[0] <= ci[1] <= 1.0
        assert op.sensitivity_ci[0] <= op.sensitivity <= op.sensitivity_ci[1]
        assert op.specificity_ci[0] <= op.specificity <= op.specificity_ci[1]
        assert op.threshold_ci[1] > op.threshold_ci[0]  # 23 images: the cut is not known exactly
    saved = clf.operating
    assert saved.threshold_ci is not None and "95% interval" in saved.describe()


def test_row_order_permutation_keeps_the_cut_off_inside_its_interval(built):
    imgs, y, clf, _ = built
    op = clf.operating
    for seed in (1, 2):
        perm = np.random.default_rng(seed).permutation(len(y))
        clf2, _ = build_classifier([imgs[i] for i in perm], y[perm], init="random", image_size=32,
                                   finding="pneumonia", n_bootstrap=200)
        assert op.threshold_ci[0] <= clf2.threshold <= op.threshold_ci[1], (clf2.threshold, op.threshold_ci)
    clf3, _ = build_classifier(imgs, y, init="random", image_size=32, finding="pneumonia", n_bootstrap=200, seed=7)
    assert op.threshold_ci[0] <= clf3.threshold <= op.threshold_ci[1], (clf3.threshold, op.threshold_ci)  # CV seed


def test_equal_rule_balances_sensitivity_and_specificity():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(200), np.zeros(200)]
    p = np.clip(np.r_[rng.normal(0.6, 0.15, 200), rng.normal(0.4, 0.15, 200)], 0, 1)
    eq = choose_operating_point(y, p, "equal")
    yd = choose_operating_point(y, p, "youden")
    assert abs(eq.sensitivity - eq.specificity) <= 0.01
    assert eq.sensitivity + eq.specificity <= yd.sensitivity + yd.specificity + 1e-12
    assert "equal sensitivity and specificity" in eq.describe() and "Youden" in yd.describe()
    assert "Balanced" not in eq.describe() + yd.describe()


def test_replicates_are_reproducible_and_cover_repeat_spread():
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(12), np.zeros(11)]
    P = np.clip(rng.normal(0.5, 0.2, (5, 23)) + 0.15 * (y - 0.5), 0, 1)
    op = choose_operating_point(np.tile(y, 5), P.ravel(), "youden")
    a, b = replicates(y, P, op, 300, seed=3), replicates(y, P, op, 300, seed=3)
    np.testing.assert_array_equal(a.thresholds, b.thresholds)
    op2, _ = with_intervals(op, y, P)
    for r in range(5):  # the cut each single repeat would choose lies inside the interval
        t = choose_operating_point(y, P[r], "youden").threshold
        assert op2.threshold_ci[0] <= t <= op2.threshold_ci[1]


# ------------------------------------------------------------------------------------------- prevalence

def test_prevalence_adjustment_is_bayes_odds_and_predictive_values_match_counting():
    assert adjust_to_prevalence(0.5, 0.5, 0.1) == pytest.approx(0.1)
    assert adjust_to_prevalence(0.7, 12 / 23, 12 / 23) == pytest.approx(0.7)
    # odds form: odds(p') = odds(p) * odds(new) / odds(train)
    p2 = float(adjust_to_prevalence(0.8, 0.4, 0.05))
    assert p2 / (1 - p2) == pytest.approx(4.0 * (0.05 / 0.95) / (0.4 / 0.6))
    # PPV/NPV against counting on a simulated population at 10% prevalence
    rng = np.random.default_rng(0)
    n = 400_000
    d = rng.random(n) < 0.1
    call = np.where(d, rng.random(n) < 0.8, rng.random(n) < 0.3)  # sensitivity 0.8, specificity 0.7
    ppv, npv = predictive_values(0.8, 0.7, 0.1)
    assert ppv == pytest.approx(call[d].sum() / call.sum(), abs=0.005)
    assert npv == pytest.approx((~call[~d]).sum() / (~call).sum(), abs=0.005)
    with pytest.raises(ValueError, match="between 0 and 1"):
        adjust_to_prevalence(0.5, 0.5, 1.5)


def test_predict_cli_reports_prevalence_adjusted_probabilities_and_predictive_values(built, tmp_path, capsys):
    from PIL import Image

    from engine.cli import main

    imgs, _, clf, _ = built
    path = clf.save(tmp_path / "c.safetensors")
    png = tmp_path / "x.png"
    Image.fromarray((imgs[0] * 255).astype(np.uint8)).save(png)
    assert main(["predict", "--model", str(path), str(png), "--prevalence", "0.05", "--equal"]) == 0
    row = json.loads(capsys.readouterr().out.strip())
    assert row["operating_point"] == "equal" and row["usable"] is True
    assert row["training_prevalence"] == pytest.approx(12 / 23)
    assert row["adjusted_probability"] == pytest.approx(
        float(adjust_to_prevalence(row["probability"], 12 / 23, 0.05)))
    assert row["adjusted_probability"] < row["probability"]
    op, rep = clf.operating_point_replicates("equal")
    pv = predictive_at(op, rep, 0.05)
    assert row["ppv"] == pytest.approx(pv.ppv) and row["ppv_ci"][0] <= row["ppv"] <= row["ppv_ci"][1]
    assert row["npv"] > 0.9  # at 5% prevalence most negatives are right
    assert main(["predict", "--model", str(path), str(png), "--prevalence", "2"]) == 2
    assert "between 0 and 1" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- the finetune case

def test_why_the_finetune_gave_0_5213_platt_clamp_on_chance_level_scores_gives_the_smoothed_prevalence():
    """Issue 21's finetune printed 0.5213 for every image: with 12 positives and 11 negatives, a Platt fit whose
    maximum-likelihood slope is <= 0 (out-of-fold scores no better than chance, a few confidently wrong) is
    clamped to slope 0, and the intercept-only fit returns the mean of Platt's smoothed targets."""
    from engine.fewshot.classifier import fit_calibration

    y = np.r_[np.ones(12), np.zeros(11)]
    rng = np.random.default_rng(0)
    s = rng.normal(0, 3, 23)
    s[:2], s[12:14] = -9.0, 9.0  # confidently wrong out-of-fold logits, as a 50-step finetune gives
    cal = fit_calibration(s, y, "platt")
    assert cal.a == 0.0
    smoothed = (12 * 13 / 14 + 11 * 1 / 13) / 23
    assert smoothed == pytest.approx(0.5213, abs=5e-5)
    assert np.allclose(cal(s), smoothed, atol=1e-4)
    u = assess(cal(s)[None, :], None, choose_operating_point(y, cal(s)))
    assert not u.usable and "same probability to every image" in u.reasons[0]


def test_a_real_finetune_at_chance_is_marked_not_usable_and_refused(tmp_path, capsys):
    """The fast finetune on images whose labels carry no signal: whatever its calibration, it is not offered."""
    from PIL import Image

    from engine.cli import main
    from engine.fewshot.finetune import FastFinetune

    imgs, _ = _arrays(12, 11, seed=5)
    y = np.random.default_rng(3).permutation(np.r_[np.ones(12), np.zeros(11)])  # labels unrelated to the images
    clf, est = build_classifier(imgs, y, init="random", mode="finetune", image_size=32, n_bootstrap=200,
                                finetune_cfg=FastFinetune(steps=2, views=1))
    use = clf.usability
    assert not use.usable, (est.auc, est.ci_low, clf.calibration)
    path = clf.save(tmp_path / "ft.safetensors")
    png = tmp_path / "x.png"
    Image.fromarray((imgs[0] * 255).astype(np.uint8)).save(png)
    assert main(["predict", "--model", str(path), str(png)]) == 2
    assert "NOT USABLE" in capsys.readouterr().err


def test_training_images_are_marked_as_such_when_scored(built, tmp_path, capsys):
    from PIL import Image

    from engine.cli import main

    imgs, _, clf, _ = built
    out = clf.predict([imgs[0], imgs[5]])
    assert all(r["training_image"] for r in out) and all(r["familiarity_distance"] < 1e-3 for r in out)
    new, _ = _noisy(2, 2, seed=11)
    assert not any(r["training_image"] for r in clf.predict(new))
    png = tmp_path / "t.png"
    Image.fromarray(np.round(imgs[0] * 255).astype(np.uint8)).save(png)  # the same pixels, read from a file
    path = clf.save(tmp_path / "c.safetensors")
    assert main(["predict", "--model", str(path), str(png)]) == 0
    assert json.loads(capsys.readouterr().out.strip())["training_image"] is True


def test_model_card_states_usability_training_prevalence_and_predictive_values(built):
    from engine.tasks.fewshot import _predictive
    from engine.tasks.model_card import model_card

    _, _, clf, _ = built
    card = model_card(clf.metadata(), predictive=_predictive(clf))
    assert "Training prevalence:** 52%" in card and "Saerens" in card and "at prevalence 5%: PPV" in card
    assert "95% interval" in card.split("Decision threshold")[1].split("\n")[0] and "NOT USABLE" not in card
    const = _constant(clf)
    card = model_card(const.metadata(), predictive=_predictive(const))
    assert "NOT USABLE - do not use this classifier on patients" in card and "same probability" in card
