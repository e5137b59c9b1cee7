"""The plots users learn from: smoothed loss curves with chance levels, and the demo's accuracy chart with both blind
baselines per answer type."""

from __future__ import annotations

import json
import math

import pytest

from tcl.config import load_config
from tcl.engine.metrics import ITM_PRIOR_ENTROPY, chance_levels, plot_losses, smoothed


def test_itm_prior_entropy_is_that_of_one_positive_to_two_negatives():
    p = 1 / 3
    assert ITM_PRIOR_ENTROPY == pytest.approx(-(p * math.log(p) + (1 - p) * math.log(1 - p)), abs=5e-4)


def test_chance_levels_follow_the_batch_and_the_queue():
    config = load_config("pretrain_tiny", ["train.batch_size=32", "model.queue_size=1024"])
    levels = chance_levels(config)
    assert levels["loss/i2t"] == levels["loss/t2t"] == pytest.approx(math.log(32 + 1024))
    assert levels["loss/lmi_image"] == pytest.approx(math.log(1 + 31 * 16))
    assert levels["loss/itm"] == ITM_PRIOR_ENTROPY and "loss/mlm" not in levels


def test_smoothing_follows_a_step_and_keeps_a_constant():
    assert smoothed([2.0] * 10, span=5) == [2.0] * 10
    rising = smoothed([0.0] * 5 + [1.0] * 30, span=5)
    assert rising[4] == 0.0 and 0.3 < rising[5] < 0.4 and rising[-1] == pytest.approx(1.0, abs=1e-4)


def test_loss_plot_draws_raw_smoothed_and_chance_lines(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [{"step": s, "loss": 5 - s / 100, "loss/i2t": 6.9, "loss/itm": 0.64} for s in range(1, 101)]
    lines.append({"step": 100, "eval/i2t_r1": 12.0, "eval/t2i_r1": 10.0})
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps(line) for line in lines))
    figures = []
    monkeypatch.setattr(plt.Figure, "savefig", lambda self, *a, **k: figures.append(self))
    plot_losses(metrics, tmp_path / "loss_curves.png", {"loss/i2t": math.log(1056), "loss/itm": ITM_PRIOR_ENTROPY})
    axes = {axis.get_title(): axis for axis in figures[0].axes if axis.get_title()}
    assert set(axes) == {"loss", "i2t", "itm", "retrieval R@1 (%)"}
    labels = [line.get_label() for line in axes["itm"].get_lines()]
    assert any(label.startswith("moving average") for label in labels) and "chance 0.64" in labels
    assert not any(label.startswith("chance") for label in (l.get_label() for l in axes["loss"].get_lines()))


def test_demo_chart_has_both_blind_baselines_for_every_group_with_value_labels(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tcl.demo import _plot

    types = {"yes/no": 66.9, "number": 58.2, "other": 50.5}
    results = {"per_answer_type": types, "vqa_accuracy": 56.6, "scratch_per_answer_type": types,
               "scratch_accuracy": 56.2, "blind_per_answer_type": {"yes/no": 50.0, "number": 40.0, "other": 45.0},
               "blind_accuracy": 46.2, "model_blind_per_answer_type": {"yes/no": 66.96, "number": 30.0,
                                                                       "other": 40.0},
               "model_blind_accuracy": 49.0}
    figures = []
    monkeypatch.setattr(plt.Figure, "savefig", lambda self, *a, **k: figures.append(self))
    _plot(results, tmp_path / "demo_accuracy.png")
    axis = figures[0].axes[0]
    texts = {text.get_text() for text in axis.texts}
    assert {"66.9", "58.2", "50.5", "56.6", "56.2"} <= texts  # bar values
    assert {"67.0", "50.0", "46.2", "49.0"} <= texts  # both blind markers, per type and overall
    segments = [c for c in axis.collections if c.get_label().startswith("blind")]
    assert sorted({c.get_label() for c in segments}) == ["blind: model fed a constant image",
                                                         "blind: question-only prior"]
