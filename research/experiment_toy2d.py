"""The thesis's 2-D experiment (TCL.md Part A §A.3): two "modalities" generated from one latent, aligned by a
contrastive objective.

    python research/experiment_toy2d.py [--seeds 5] [--out benchmarks/results/toy2d]

z ~ N(0, I₂). Two RealNVP flows are fitted by maximum likelihood, one to "two moons" and one to "five concentric
circles"; pushing the same z through both gives paired points (a, b). Two encoders of two fully connected layers map
a and b to 2-D embeddings x and y. Loss = the contrastive objective on the L2-normalised embeddings (both directions,
in-batch negatives) + KL(N(batch mean, batch variance) ‖ N(0, I)) of each encoder's raw outputs. 50 epochs, batch 32,
Adam lr 1e-3, for InfoNCE, L_Neg and L_Pos (``tcl.losses.objectives``). Metrics on held-out pairs: MAE = mean
‖x_i − y_i‖ of the raw embeddings and the mean cosine between x_i and y_i, before and after training, next to the
thesis's numbers. Writes ``toy2d.json``, ``toy2d.md`` and ``toy2d_embeddings.png`` (embeddings coloured by the
angle of their latent z).

Not stated in the thesis, chosen here: 4,096 training pairs and 1,024 test pairs, hidden width 64, temperature 0.5
(``--temperature``), τ⁺ = 0.1 (``--tau-plus``), L_Pos with its e_self term (``--no-self`` drops it), flows of 6
affine coupling layers trained for 2,000 steps (``--flow-steps``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tcl.losses.objectives import ContrastiveObjective, contrastive_loss

THESIS = {"before": (1.508, 0.080), "infonce": (0.616, 0.897), "debiased_pos": (0.564, 0.911)}
OBJECTIVES = ("infonce", "debiased_neg", "debiased_pos")


def two_moons(n: int, rng: np.random.Generator) -> np.ndarray:
    t = rng.uniform(0, math.pi, n)
    upper = rng.random(n) < 0.5
    x = np.where(upper, np.cos(t), 1 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    return np.stack([x, y], 1) + rng.normal(0, 0.05, (n, 2))


def five_circles(n: int, rng: np.random.Generator) -> np.ndarray:
    radius = rng.integers(1, 6, n).astype(float)
    angle = rng.uniform(0, 2 * math.pi, n)
    return np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1) / 2.5 + rng.normal(0, 0.04, (n, 2))


class Coupling(nn.Module):
    """Affine coupling: one coordinate is scaled and shifted by functions of the other."""

    def __init__(self, keep: int, hidden: int = 64):
        super().__init__()
        self.keep = keep
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 2))

    def _params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_scale, shift = self.net(x[:, self.keep:self.keep + 1]).chunk(2, dim=1)
        return torch.tanh(log_scale), shift

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # latent → data
        log_scale, shift = self._params(z)
        out = z.clone()
        out[:, 1 - self.keep] = (z[:, 1 - self.keep:2 - self.keep] * log_scale.exp() + shift).squeeze(1)
        return out

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # data → latent, log|det|
        log_scale, shift = self._params(x)
        out = x.clone()
        out[:, 1 - self.keep] = ((x[:, 1 - self.keep:2 - self.keep] - shift) * (-log_scale).exp()).squeeze(1)
        return out, -log_scale.squeeze(1)


class RealNVP(nn.Module):
    def __init__(self, layers: int = 6):
        super().__init__()
        self.layers = nn.ModuleList(Coupling(i % 2) for i in range(layers))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            z = layer(z)
        return z

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(x.shape[0])
        for layer in reversed(self.layers):
            x, log_det = layer.inverse(x)
            total = total + log_det
        return total - 0.5 * (x ** 2).sum(1) - math.log(2 * math.pi)


def fit_flow(sampler, steps: int, seed: int) -> RealNVP:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    flow = RealNVP()
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
    for _ in range(steps):
        x = torch.as_tensor(sampler(256, rng), dtype=torch.float32)
        loss = -flow.log_prob(x).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return flow.eval()


def encoder(hidden: int = 64) -> nn.Module:
    return nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 2))


def kl_to_standard_normal(h: torch.Tensor) -> torch.Tensor:
    mean, var = h.mean(0), h.var(0) + 1e-6
    return 0.5 * (var + mean ** 2 - 1 - var.log()).sum()


def metrics(f: nn.Module, g: nn.Module, a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        x, y = f(a), g(b)
    return float((x - y).norm(dim=1).mean()), float(F.cosine_similarity(x, y, dim=1).mean())


def train(objective: ContrastiveObjective, pairs: tuple, seed: int, epochs: int = 50, batch: int = 32,
          temperature: float = 0.5):
    a_train, b_train, a_test, b_test = pairs
    torch.manual_seed(seed)
    f, g = encoder(), encoder()
    before = metrics(f, g, a_test, b_test)
    optimizer = torch.optim.Adam([*f.parameters(), *g.parameters()], lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(batch)
    for _ in range(epochs):
        for index in torch.randperm(len(a_train), generator=generator).split(batch):
            if len(index) < batch:
                continue
            x, y = f(a_train[index]), g(b_train[index])
            sim = F.normalize(x, dim=1) @ F.normalize(y, dim=1).T
            contrastive = 0.5 * (contrastive_loss(sim, labels, temperature, objective) +
                                 contrastive_loss(sim.T, labels, temperature, objective))
            loss = contrastive + kl_to_standard_normal(x) + kl_to_standard_normal(y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return before, metrics(f, g, a_test, b_test), (f, g)


def make_pairs(seed: int, flows: tuple[RealNVP, RealNVP], train_size: int = 4096, test_size: int = 1024):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(train_size + test_size, 2, generator=generator)
    with torch.no_grad():
        a, b = flows[0](z), flows[1](z)
    a, b = (a - a.mean(0)) / a.std(0), (b - b.mean(0)) / b.std(0)
    return (a[:train_size], b[:train_size], a[train_size:], b[train_size:]), z[train_size:]


def plot(models: dict, pairs: tuple, z_test: torch.Tensor, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, _, a_test, b_test = pairs
    colour = torch.atan2(z_test[:, 1], z_test[:, 0]).numpy()
    fig, axes = plt.subplots(2, len(models) + 1, figsize=(4 * (len(models) + 1), 8))
    axes[0, 0].scatter(a_test[:, 0], a_test[:, 1], c=colour, s=3, cmap="hsv")
    axes[0, 0].set_title("modality a (two moons)")
    axes[1, 0].scatter(b_test[:, 0], b_test[:, 1], c=colour, s=3, cmap="hsv")
    axes[1, 0].set_title("modality b (five circles)")
    for column, (name, (f, g)) in enumerate(models.items(), start=1):
        with torch.no_grad():
            x, y = f(a_test), g(b_test)
        axes[0, column].scatter(x[:, 0], x[:, 1], c=colour, s=3, cmap="hsv")
        axes[0, column].set_title(f"{name}: x = f(a)")
        axes[1, column].scatter(y[:, 0], y[:, 1], c=colour, s=3, cmap="hsv")
        axes[1, column].set_title(f"{name}: y = g(b)")
    fig.suptitle("embeddings coloured by the angle of the shared latent z (seed 0)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--flow-steps", type=int, default=2000)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--tau-plus", type=float, default=0.1)
    parser.add_argument("--no-self", action="store_true", help="L_Pos without the e_self term (loss.include_self)")
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    parser.add_argument("--out", default="benchmarks/results/toy2d")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: threads only add overhead
    try:
        return _run(args, argv)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, argv: list[str] | None) -> int:
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    flows = (fit_flow(two_moons, args.flow_steps, 0), fit_flow(five_circles, args.flow_steps, 1))
    pairs, z_test = make_pairs(0, flows)
    results: dict[str, dict] = {}
    examples = {}
    for objective in args.objectives:
        settings = ContrastiveObjective(objective, args.tau_plus, include_self=not args.no_self)
        runs = [train(settings, pairs, seed, args.epochs, temperature=args.temperature) for seed in range(args.seeds)]
        examples[objective] = runs[0][2]
        results[objective] = {"mae": [r[1][0] for r in runs], "cosine": [r[1][1] for r in runs],
                              "before_mae": [r[0][0] for r in runs], "before_cosine": [r[0][1] for r in runs]}
    rows = ["| | MAE (ours, mean ± std over seeds) | cosine (ours) | MAE (thesis) | cosine (thesis) |",
            "|---|---|---|---|---|"]
    before = results[args.objectives[0]]
    rows.append(f"| before training | {_pm(before['before_mae'])} | {_pm(before['before_cosine'])} | "
                f"{THESIS['before'][0]} | {THESIS['before'][1]} |")
    names = {"infonce": "InfoNCE", "debiased_neg": "L_Neg", "debiased_pos": "L_Pos"}
    for objective in args.objectives:
        thesis = THESIS.get(objective, ("–", "–"))
        rows.append(f"| {names[objective]} | {_pm(results[objective]['mae'])} | {_pm(results[objective]['cosine'])} |"
                    f" {thesis[0]} | {thesis[1]} |")
    minutes = (time.perf_counter() - start) / 60
    payload = {"command": " ".join(["python research/experiment_toy2d.py", *(argv or sys.argv[1:])]),
               "date": time.strftime("%Y-%m-%d"), "minutes": minutes, "seeds": args.seeds, "results": results,
               "settings": {"temperature": args.temperature, "tau_plus": args.tau_plus, "include_self": not args.no_self},
               "thesis": THESIS}
    (out / "toy2d.json").write_text(json.dumps(payload, indent=2))
    (out / "toy2d.md").write_text("\n".join(rows) + "\n")
    plot(examples, pairs, z_test, out / "toy2d_embeddings.png")
    print("\n".join(rows))
    print(f"{minutes:.1f} min; wrote {out}/toy2d.json, toy2d.md, toy2d_embeddings.png")
    return 0


def _pm(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


if __name__ == "__main__":
    sys.exit(main())
