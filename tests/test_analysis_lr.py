"""best_lr, unstable_base_lr and the warnings from a table of trials."""

from __future__ import annotations

import pandas as pd

from stabsweep.analysis.lr import lr_findings


def trials(rows, seeds=None):
    return pd.DataFrame(
        [
            {
                "trial_id": i,
                "lr": lr,
                "seed": 0 if seeds is None else seeds[i],
                "status": status,
                "best_eval_loss": loss,
                "reason": f"{status} reason",
            }
            for i, (lr, status, loss) in enumerate(rows)
        ]
    )


def test_best_is_lowest_eval_loss_among_feasible_and_unstable_is_next_bad_rate_above():
    found = lr_findings(
        trials(
            [
                (0.01, "ok", 0.5),
                (0.1, "ok", 0.2),
                (0.3, "unstable", 0.1),  # lowest loss, and feasible: unstable still counts
                (1.0, "ok", 0.3),
                (3.0, "diverged", 2.3),
                (10.0, "diverged", 2.3),
            ]
        )
    )
    assert found.best_lr == 0.3
    assert found.unstable_base_lr == 3.0
    assert found.infeasible_fraction == round(2 / 6, 4)


def test_unstable_rate_must_be_above_best():
    found = lr_findings(trials([(0.001, "diverged", 9.0), (0.01, "ok", 0.3), (0.1, "ok", 0.2)]))
    assert found.best_lr == 0.1
    assert found.unstable_base_lr is None
    assert any("highest rate in the grid" in w for w in found.warnings)


def test_a_rate_above_lr_star_that_learned_nothing_is_the_unstable_rate():
    """The post-norm Transformer sits at chance above its edge: that is where training fails."""
    found = lr_findings(trials([(0.01, "ok", 0.3), (0.1, "learned_nothing", 2.3), (1.0, "diverged", 2.3)]))
    assert found.best_lr == 0.01
    assert found.unstable_base_lr == 0.1
    assert found.unstable_kind == "learned_nothing" and found.unstable_reason == "learned_nothing reason"
    assert found.p_unstable == 1.0


def test_an_unstable_best_rate_is_warned_about():
    found = lr_findings(trials([(0.01, "ok", 0.5), (0.1, "unstable", 0.2), (1.0, "diverged", 2.3)]))
    assert found.best_lr == 0.1
    assert any("the best rate 0.1 is itself unstable" in w for w in found.warnings)


def test_warnings_edge_adjacent_and_mostly_infeasible():
    found = lr_findings(
        trials([(0.01, "ok", 0.3), (0.1, "diverged", 2.3), (1.0, "diverged", 2.3), (10.0, "failed", None)])
    )
    text = " ".join(found.warnings)
    assert "lowest rate in the grid" in text
    assert "right below the unstable rate" in text
    assert "most trials" in text
    assert "1 of 4 trials failed" in text


def test_nothing_feasible():
    found = lr_findings(trials([(1.0, "diverged", 2.3), (10.0, "diverged", 2.3)]))
    assert found.best_lr is None and found.unstable_base_lr is None
    assert found.infeasible_fraction == 1.0


def test_without_eval_data_the_objective_is_the_training_loss():
    frame = trials([(0.01, "ok", None), (0.1, "ok", None)])
    frame["final_train_loss"] = [0.4, 0.2]
    found = lr_findings(frame)
    assert found.objective == "final_train_loss" and found.best_lr == 0.1


def seeded(per_rate):
    """Rows for several seeds per rate: {lr: [(status, loss), ...]}."""
    rows, seeds = [], []
    for lr, outcomes in per_rate.items():
        for seed, (status, loss) in enumerate(outcomes):
            rows.append((lr, status, loss))
            seeds.append(seed)
    return trials(rows, seeds)


def test_with_seeds_the_best_rate_is_the_best_mean_among_rates_where_every_seed_is_feasible():
    found = lr_findings(
        seeded(
            {
                0.01: [("ok", 0.50), ("ok", 0.52), ("ok", 0.48)],
                0.1: [("ok", 0.20), ("ok", 0.30), ("unstable", 0.25)],  # mean 0.25, all feasible
                0.3: [("ok", 0.10), ("diverged", 2.3), ("ok", 0.12)],  # best seeds, but one diverged
                1.0: [("diverged", 2.3)] * 3,
            }
        )
    )
    assert found.best_lr == 0.1 and found.best_objective == 0.25
    assert found.unstable_base_lr == 0.3 and found.p_unstable == round(1 / 3, 4)
    assert found.unstable_kind == "diverged"
    assert found.unstable_reason.startswith("1 of 3 seeds failed, the worst diverged: seed 1:")
    assert found.edge_rates == [0.1, 0.3]  # the seeds disagree there
    rate = next(r for r in found.rates if r["lr"] == 0.1)
    assert rate["seeds"] == 3 and rate["ok"] == 2 and rate["unstable"] == 1 and rate["p_unstable"] == round(1 / 3, 4)
    assert rate["objective_mean"] == 0.25 and rate["objective_min"] == 0.2 and rate["objective_max"] == 0.3


def test_with_seeds_one_failing_seed_at_lr_star_makes_the_rate_infeasible():
    found = lr_findings(seeded({0.01: [("ok", 0.5), ("ok", 0.5)], 0.1: [("ok", 0.1), ("learned_nothing", 2.3)]}))
    assert found.best_lr == 0.01 and found.unstable_base_lr == 0.1 and found.p_unstable == 0.5


def test_with_seeds_when_every_trial_fails_nothing_is_found():
    found = lr_findings(seeded({0.1: [("diverged", 2.3), ("failed", None)], 1.0: [("diverged", 2.3)] * 2}))
    assert found.best_lr is None and found.unstable_base_lr is None
    assert found.infeasible_fraction == 1.0 and any("1 of 4 trials failed" in w for w in found.warnings)
