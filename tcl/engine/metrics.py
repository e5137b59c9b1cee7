"""Training feedback: a tqdm bar on the main process, per-step metrics to JSONL and TensorBoard, loss-curve plots."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)
EVAL_SHOWN = ("i2t_r1", "t2i_r1", "itm_accuracy", "mlm_word_accuracy")
# Panels of evaluation curves: each groups metrics on the same scale (percent).
EVAL_PANELS = {"retrieval R@1 (%)": ("eval/i2t_r1", "eval/t2i_r1"),
               "ITM / masked-word accuracy (%)": ("eval/itm_accuracy", "eval/mlm_word_accuracy")}


SAMPLE_KEYS = "sample_keys/rank{rank}.jsonl"


class SampleKeyLog:
    """``train.log_sample_keys``: one JSON line per micro-batch, ``{"step", "micro", "keys"}`` (``step``: the
    optimizer step the batch belongs to), in ``sample_keys/rank<r>.jsonl`` of each process."""

    def __init__(self, output_dir: Path, rank: int):
        path = output_dir / SAMPLE_KEYS.format(rank=rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(path, "a")

    def write(self, step: int, micro: int, keys: list[str]) -> None:
        self.handle.write(json.dumps({"step": step, "micro": micro, "keys": keys}) + "\n")

    def flush(self) -> None:
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


class MetricsLogger:
    """Writes one JSON line per logged optimizer step (main process only) and mirrors it to accelerate's
    trackers."""

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

    def log_step(self, step: int, numbers: dict[str, float], lr: float, alpha: float, samples_per_s: float,
                 bar) -> None:
        """One JSON line of the step's ``numbers`` (``loss``, ``loss/<term>``, ``diag/<name>``, already read from
        the device, and the process's peak memory so far), lr, alpha and throughput, mirrored to the trackers; the
        progress bar shows the loss."""
        record = {"step": step, "loss": numbers["loss"], "lr": lr, "alpha": alpha, "samples_per_s": samples_per_s,
                  **{k: v for k, v in numbers.items() if k != "loss"}}
        self.accelerator.log(record, step=step)
        if self.main:
            self.handle.write(json.dumps(record) + "\n")
            self.handle.flush()
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2e}", sps=f"{samples_per_s:.1f}")

    def log_eval(self, step: int, results: dict) -> None:
        """One JSON line ``{"step", "eval/<name>": value, ...}`` (main process), mirrored to the trackers."""
        record = {"step": step, **{f"eval/{k}": float(v) for k, v in results.items()}}
        self.accelerator.log(record, step=step)
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        logger.info("step %d evaluation: %s", step, headline(results))

    def close(self) -> None:
        self.accelerator.end_training()
        if self.handle:
            self.handle.close()


def headline(results: dict) -> str:
    """The evaluation numbers a log line shows: ``i2t_r1 52.0, t2i_r1 55.0, itm_accuracy 90.0, ...``."""
    return ", ".join(f"{key} {results[key]:.1f}" for key in EVAL_SHOWN if key in results)


# ITM's binary cross-entropy when it predicts only its label prior: one positive to two negatives per image.
ITM_PRIOR_ENTROPY = 0.637
IMAGE_REGIONS = 16  # LMI's 4 x 4 pooled image regions (tcl.losses.contrastive_terms.pool_image_regions)


def chance_levels(config) -> dict[str, float]:
    """What each pretraining loss term is at chance, for the plots: ln(number of candidates) for the contrastive
    terms (the batch and the queue for CMA and IMC; one local positive among the other samples' locals for LMI, its
    text side bounded by ``model.max_text_len`` tokens), and the label-prior entropy for ITM. Terms of other runs
    (VQA) have no entry."""
    import math

    batch, queue = config.train.batch_size, config.model.queue_size
    contrastive = math.log(batch + queue)
    levels = {f"loss/{term}": contrastive for term in ("i2t", "t2i", "i2i", "t2t")}
    levels["loss/lmi_image"] = math.log(1 + (batch - 1) * IMAGE_REGIONS)
    levels["loss/lmi_text"] = math.log(1 + (batch - 1) * config.model.max_text_len)
    levels["loss/itm"] = ITM_PRIOR_ENTROPY
    return levels


def smoothed(values: list[float], span: int) -> list[float]:
    """Exponential moving average with the given span (pandas' ``ewm(span=...)`` without bias correction), so a
    noisy per-step loss shows its trend."""
    alpha, out, level = 2.0 / (span + 1.0), [], None
    for value in values:
        level = value if level is None else alpha * value + (1 - alpha) * level
        out.append(level)
    return out


def plot_losses(metrics_file: Path, out: Path, chance: dict[str, float] | None = None) -> Path | None:
    """One panel per loss term against the step — the raw values faint, their moving average drawn over them, the
    term's chance level (``chance_levels``) as a dashed line so that a stalled term shows at a glance — and the
    evaluation curves; returns the PNG path (None without metrics)."""
    if not metrics_file.exists():
        return None
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chance = chance or {}
    present = {k for r in records for k in r}
    panels = {key.replace("loss/", ""): (key,) for key in ["loss"] + sorted(k for k in present
                                                                               if k.startswith("loss/"))}
    panels.update({title: keys for title, keys in EVAL_PANELS.items() if present.intersection(keys)})
    columns = 3
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.6 * rows), squeeze=False)
    span = max(5, len(records) // 40)
    for axis, (title, keys) in zip(axes.flat, panels.items()):
        for key in keys:
            points = [(r["step"], r[key]) for r in records if key in r]
            if not points:
                continue
            steps, values = zip(*points)
            if key.startswith("eval/"):
                axis.plot(steps, values, linewidth=1, marker="o", markersize=3, label=key.replace("eval/", ""))
                continue
            axis.plot(steps, values, linewidth=0.6, alpha=0.3, color="tab:blue")
            axis.plot(steps, smoothed(list(values), span), linewidth=1.4, color="tab:blue",
                      label=f"moving average, span {span}")
            if key in chance:
                axis.axhline(chance[key], color="tab:red", linestyle="--", linewidth=1,
                             label=f"chance {chance[key]:.2f}")
        if len(keys) > 1 or any(key in chance for key in keys):
            axis.legend(fontsize=7)
        axis.set_title(title)
        axis.set_xlabel("step")
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out
