"""best_lr, unstable_base_lr and the warnings from a table of trials."""

from __future__ import annotations

import pandas as pd

from stabsweep.analysis.lr import lr_findings


def trials(rows):
    return pd.DataFrame(
        [
            {"trial_id": i, "lr": lr, "status": status, "best_eval_loss": loss, "reason": status}
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


def test_learned_nothing_is_infeasible_but_not_the_unstable_rate():
    found = lr_findings(trials([(0.01, "ok", 0.3), (0.1, "learned_nothing", 2.3), (1.0, "diverged", 2.3)]))
    assert found.best_lr == 0.01
    assert found.unstable_base_lr == 1.0


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
