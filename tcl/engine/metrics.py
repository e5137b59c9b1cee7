"""Training feedback: a tqdm bar on the main process, per-step metrics to JSONL and TensorBoard, loss-curve plots."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


class MetricsLogger:
    """Writes one JSON line per optimizer step (main process only) and mirrors it to accelerate's trackers."""

    def __init__(self, accelerator, output_dir: Path, tracker_name: str = "tensorboard"):
        self.accelerator = accelerator
        self.main = accelerator.is_main_process
        self.handle = None
        if self.main:
            output_dir.mkdir(parents=True, exist_ok=True)
            self.handle = open(output_dir / "metrics.jsonl", "a")
        accelerator.init_trackers(tracker_name)

    def progress(self, total: int, initial: int):
        return tqdm(total=total, initial=initial, desc="train", unit="step", disable=not self.main,
                    dynamic_ncols=True)

    def log_step(self, step: int, output, lr: float, alpha: float, samples_per_s: float, bar) -> None:
        record = {"step": step, "loss": float(output.loss.detach()), "lr": lr, "alpha": alpha,
                  "samples_per_s": samples_per_s}
        record.update({f"loss/{k}": float(v) for k, v in output.losses.items()})
        record.update({f"diag/{k}": float(v) for k, v in output.diagnostics.items()})
        self.accelerator.log(record, step=step)
        if self.main:
            self.handle.write(json.dumps(record) + "\n")
            self.handle.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2e}", sps=f"{samples_per_s:.1f}")

    def close(self) -> None:
        self.accelerator.end_training()
        if self.handle:
            self.handle.close()


def plot_losses(metrics_file: Path, out: Path) -> Path | None:
    """One panel per loss term against the step; returns the PNG path (None without metrics)."""
    if not metrics_file.exists():
        return None
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["loss"] + sorted(k for k in records[-1] if k.startswith("loss/"))
    columns = 3
    rows = (len(keys) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.6 * rows), squeeze=False)
    steps = [r["step"] for r in records]
    for axis, key in zip(axes.flat, keys):
        axis.plot(steps, [r.get(key, float("nan")) for r in records], linewidth=1)
        axis.set_title(key.replace("loss/", ""))
        axis.set_xlabel("step")
    for axis in list(axes.flat)[len(keys):]:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out
