"""Our pretraining step against the official TCL code's, side by side, at the same configuration.

The official model classes are imported from a checkout of uta-smile/TCL that you provide (nothing of it is in this
repository), with the library versions it was written for installed into a folder of their own:

    git clone https://github.com/uta-smile/TCL /path/TCL            # commit 74a3e4f
    pip install --no-deps --target /path/tcl_deps timm==0.4.9 transformers==4.8.1 huggingface-hub==0.0.12 sacremoses \\
        requests charset-normalizer
    taskset -c 1 python benchmarks/compare_official.py --tcl-checkout /path/TCL --deps /path/tcl_deps \\
        [--config tiny|wider|paper] [--settings official|tiny] [--precision fp32|bf16] [--rounds 5] [--steps 20] \
        [--device cpu|cuda]

(transformers 4.8.1 and huggingface-hub 0.0.12 import requests, which today's libraries no longer bring; urllib3,
idna and certifi come with this project's requirements.)

Both models get random weights (no downloads: the official DeiT and BERT loading is replaced by random
initialisation of the same modules, and its ViT and BERT are built at this configuration's sizes), the same random
inputs, TCL's α 0.4 and AdamW at lr 1e-4. Each run is a fresh process timing ``--steps`` full optimizer steps
(forward with every loss, backward, AdamW, momentum update); the runs alternate official / ours / official / ours,
and the script prints each run's median of its last three quarters of steps, the medians of both sides, the ratio
ours / official with its range over the rounds, each side's peak memory and both models' last-step losses.

``--settings official`` runs ours with TCL's settings (BERT init, [CLS] features, momentum 0.995, hard ITM
negatives, distillation, dropout everywhere, the official LMI pooling kernel, plain AdamW); ``--settings tiny`` with
the speed-relevant settings of our tiny configs that keep the architecture (fused AdamW, no teacher dropout,
attention dropout 0, random ITM negatives, no distillation, mean-pooled features; the official code has no
convolutional stem, so both sides keep the linear patch embedding).

Transformers 4.8.1 refuses today's ``tokenizers`` at import (a version check); the official model never tokenizes
here, so the worker replaces that one check module before importing transformers. The official code runs unchanged.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "tiny": dict(image=64, patch=16, vision_width=192, vision_depth=4, vision_heads=3, hidden=192, text_layers=4,
                 fusion_layers=2, embed=64, queue=256, batch=16, tokens=30, vocab=512),
    "wider": dict(image=128, patch=8, vision_width=384, vision_depth=6, vision_heads=6, hidden=384, text_layers=4,
                  fusion_layers=2, embed=64, queue=1024, batch=8, tokens=30, vocab=512),
    # TCL's pretraining: ViT-B/16 at 256 px, BERT-base (6 text + 6 fusion layers), queue 65,536, batch 64 per GPU
    "paper": dict(image=256, patch=16, vision_width=768, vision_depth=12, vision_heads=12, hidden=768, text_layers=6,
                  fusion_layers=6, embed=256, queue=65536, batch=64, tokens=30, vocab=30522),
}
PAD, CLS, MASK = 0, 2, 4
OURS_SETTINGS = {
    "official": ["model.init_scheme=bert", "model.feature_pool=cls", "model.momentum=0.995", "model.vision_stem=patch",
                 "model.teacher_dropout=true", "model.attention_dropout=0.1", "model.hidden_dropout=0.1",
                 "train.fused_adamw=false", "loss.distill=true", "loss.itm_negatives=hard",
                 "loss.skip_identical_captions=false", "loss.lmi_pooling=tcl_pretrain"],
    "tiny": ["model.init_scheme=xavier_qk", "model.feature_pool=mean", "model.momentum=0.9", "model.vision_stem=patch",
             "model.teacher_dropout=false", "model.attention_dropout=0.0", "model.hidden_dropout=0.1",
             "train.fused_adamw=true", "loss.distill=false", "loss.itm_negatives=random",
             "loss.skip_identical_captions=true", "loss.lmi_pooling=tcl_pretrain"],
}


def inputs(cfg: dict, device):
    """The same random batch for both sides: two views, token ids starting with [CLS], a padded tail on half."""
    import torch

    g = torch.Generator().manual_seed(0)
    batch, size, length = cfg["batch"], cfg["image"], cfg["tokens"]
    image = torch.randn(batch, 3, size, size, generator=g)
    image_aug = torch.randn(batch, 3, size, size, generator=g)
    ids = torch.randint(5, cfg["vocab"], (batch, length), generator=g)
    ids[:, 0] = CLS
    mask = torch.ones_like(ids)
    mask[: batch // 2, length - 6:] = 0
    ids[mask == 0] = PAD
    return [t.to(device) for t in (image, image_aug, ids, mask)]


def official_step_fn(cfg: dict, checkout: Path, deps: Path, device):
    """The official ALBEF/TCL pretraining model at ``cfg``'s sizes and one optimizer step of it (Pretrain.py)."""
    sys.path[:0] = [str(deps), str(checkout)]
    shim = types.ModuleType("transformers.dependency_versions_check")
    shim.dep_version_check = lambda pkg, hint=None: None
    sys.modules["transformers.dependency_versions_check"] = shim
    import torch
    import models.model_pretrain as official
    from models.xbert import BertForMaskedLM
    from optim import create_optimizer

    vit = official.VisionTransformer
    sizes = dict(embed_dim=cfg["vision_width"], depth=cfg["vision_depth"], num_heads=cfg["vision_heads"],
                 patch_size=cfg["patch"])
    official.VisionTransformer = lambda **kwargs: vit(**{**kwargs, **sizes})
    BertForMaskedLM.from_pretrained = classmethod(lambda cls, name, config: cls(config))
    bert = {"architectures": ["BertForMaskedLM"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "hidden_size": cfg["hidden"], "initializer_range": 0.02,
            "intermediate_size": 4 * cfg["hidden"], "layer_norm_eps": 1e-12, "max_position_embeddings": 64,
            "model_type": "bert", "num_attention_heads": cfg["hidden"] // 64,
            "num_hidden_layers": cfg["text_layers"] + cfg["fusion_layers"], "pad_token_id": PAD, "type_vocab_size": 2,
            "vocab_size": cfg["vocab"], "fusion_layer": cfg["text_layers"], "encoder_width": cfg["vision_width"]}
    bert_file = Path(tempfile.mkdtemp()) / "config_bert.json"
    bert_file.write_text(json.dumps(bert))
    config = {"mlm_probability": 0.15, "embed_dim": cfg["embed"], "image_res": cfg["image"],
              "vision_width": cfg["vision_width"], "bert_config": str(bert_file), "temp": 0.07,
              "queue_size": cfg["queue"], "momentum": 0.995}
    tokenizer = types.SimpleNamespace(pad_token_id=PAD, cls_token_id=CLS, mask_token_id=MASK)
    if not torch.distributed.is_initialized():  # its queue update all-gathers, as under its distributed launcher
        store = Path(tempfile.mkdtemp()) / "store"
        backend = "nccl" if device.type == "cuda" else "gloo"  # gloo cannot gather CUDA tensors
        torch.distributed.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1)
    torch.manual_seed(0)
    model = official.ALBEF(text_encoder="random", tokenizer=tokenizer, config=config, init_deit=False).to(device)
    model.train()
    optimizer = create_optimizer(types.SimpleNamespace(opt="adamW", lr=1e-4, weight_decay=0.02), model)
    image, image_aug, ids, mask = inputs(cfg, device)
    text = types.SimpleNamespace(input_ids=ids, attention_mask=mask)

    def step() -> dict:
        optimizer.zero_grad()
        loss_mlm, loss_ita, loss_itm = model(image, image_aug, text, alpha=0.4)
        (loss_mlm + loss_ita + loss_itm).backward()
        optimizer.step()
        return {"mlm": float(loss_mlm), "ita": float(loss_ita), "itm": float(loss_itm)}

    return step


def ours_step_fn(cfg: dict, settings: str, device, precision: str = "fp32"):
    """Our TCLPretrainModel at the same sizes, with ``settings``, and one optimizer step of it (forward under bf16
    autocast with ``precision`` bf16, as ``train.mixed_precision`` runs it; weights, momentum copy and queues fp32)."""
    sys.path.insert(0, str(REPO))
    import torch

    from tcl.config import load_config
    from tcl.engine.optim import build_optimizer
    from tcl.models import TCLPretrainModel
    from tcl.models.pretrain import SpecialTokens

    overrides = [f"model.image_size={cfg['image']}", f"model.patch_size={cfg['patch']}",
                 f"model.vision_width={cfg['vision_width']}", f"model.vision_depth={cfg['vision_depth']}",
                 f"model.vision_heads={cfg['vision_heads']}", f"model.hidden_size={cfg['hidden']}",
                 f"model.num_hidden_layers={cfg['text_layers'] + cfg['fusion_layers']}",
                 f"model.fusion_layer={cfg['text_layers']}", f"model.num_attention_heads={cfg['hidden'] // 64}",
                 f"model.intermediate_size={4 * cfg['hidden']}", "model.max_position_embeddings=64",
                 f"model.embed_dim={cfg['embed']}", f"model.queue_size={cfg['queue']}",
                 f"model.max_text_len={cfg['tokens']}", f"model.vocab_size={cfg['vocab']}",
                 f"train.batch_size={cfg['batch']}", "train.lr=1e-4", "train.weight_decay=0.02", "loss.alpha=0.4",
                 "loss.objective=infonce", "loss.region_class_weight=0", "loss.grounding_weight=0",
                 *OURS_SETTINGS[settings]]
    config = load_config("pretrain_tiny", overrides, world_size=1)
    torch.manual_seed(0)
    model = TCLPretrainModel(config.model, config.loss, cfg["vocab"], SpecialTokens(pad=PAD, cls=CLS, mask=MASK))
    model = model.to(device).train()
    optimizer = build_optimizer(model, config.train)
    batch = inputs(cfg, device)

    def step() -> dict:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            output = model(*batch, alpha=0.4)
        output.loss.backward()
        optimizer.step()
        ita = sum(float(output.losses[k]) for k in ("i2t", "t2i", "i2i", "t2t", "lmi_image", "lmi_text")) / 6
        return {"mlm": float(output.losses["mlm"]), "ita": ita, "itm": float(output.losses["itm"])}

    return step


def worker(args: argparse.Namespace) -> int:
    """One run in this process: time the steps of one side and print one JSON line."""
    import resource

    import torch

    device = torch.device(args.device)
    cfg = CONFIGS[args.config]
    step = (official_step_fn(cfg, Path(args.tcl_checkout), Path(args.deps), device) if args.worker == "official"
            else ours_step_fn(cfg, args.settings, device, args.precision))
    times, losses = [], {}
    for _ in range(args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        losses = step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    kept = times[len(times) // 4:]  # the first quarter warms caches and allocators up
    peak = (torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps({"side": args.worker, "median_s": statistics.median(kept), "steps": args.steps,
                      "peak_mb": peak, "last_losses": losses}))
    return 0


def run_side(args: argparse.Namespace, side: str) -> dict:
    command = [sys.executable, __file__, "--worker", side, "--config", args.config, "--settings", args.settings,
               "--precision", args.precision, "--steps", str(args.steps), "--device", args.device, "--tcl-checkout", args.tcl_checkout,
               "--deps", args.deps]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise SystemExit(f"the {side} run failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tcl-checkout", required=True, help="a checkout of github.com/uta-smile/TCL")
    parser.add_argument("--deps", required=True, help="the folder with timm 0.4.9 and transformers 4.8.1 (see above)")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--settings", choices=sorted(OURS_SETTINGS), default="official",
                        help="our side's settings: TCL's, or our tiny configs' speed settings")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="our side's precision (the official code trains in fp32)")
    parser.add_argument("--rounds", type=int, default=5, help="official/ours pairs of runs, alternated")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="write every run and the summary here")
    parser.add_argument("--worker", choices=("official", "ours"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("tcl_checkout", "deps"):
        if not (Path(getattr(args, name)) / ("models" if name == "tcl_checkout" else "transformers")).is_dir():
            raise SystemExit(f"--{name.replace('_', '-')} {getattr(args, name)}: not the folder described in "
                             f"this script's docstring")
    if args.worker:
        return worker(args)
    runs = []
    for round_index in range(args.rounds):
        for side in ("official", "ours"):
            run = run_side(args, side)
            runs.append(run)
            print(f"round {round_index + 1} {side:<8} median {1000 * run['median_s']:7.1f} ms  peak "
                  f"{run['peak_mb']:.0f} MB  last losses {run['last_losses']}", flush=True)
    medians = {side: statistics.median(r["median_s"] for r in runs if r["side"] == side) for side in ("official", "ours")}
    ratios = [b["median_s"] / a["median_s"] for a, b in zip(runs[0::2], runs[1::2])]
    summary = {"config": args.config, "batch": CONFIGS[args.config]["batch"], "settings": args.settings,
               "precision": args.precision,
               "device": args.device, "rounds": args.rounds,
               "steps": args.steps, "median_official_s": medians["official"], "median_ours_s": medians["ours"],
               "ratio": medians["ours"] / medians["official"], "ratio_min": min(ratios), "ratio_max": max(ratios),
               "peak_mb": {side: max(r["peak_mb"] for r in runs if r["side"] == side) for side in medians},
               "date": time.strftime("%Y-%m-%d"),
               "command": " ".join(["python benchmarks/compare_official.py",
                                    *(argv if argv is not None else sys.argv[1:])])}
    print(f"{args.config}, ours with {args.settings} settings in {args.precision}: official {1000 * medians['official']:.0f} ms, ours "
          f"{1000 * medians['ours']:.0f} ms, ratio {summary['ratio']:.3f} (rounds {min(ratios):.3f}–"
          f"{max(ratios):.3f}); peak {summary['peak_mb']['official']:.0f} / {summary['peak_mb']['ours']:.0f} MB")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"summary": summary, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
