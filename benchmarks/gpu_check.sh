#!/usr/bin/env bash
# The GPU path checked and measured on one GPU, in under 5 minutes, into one JSON file.
#
#   bash benchmarks/gpu_check.sh [OUT.json]            # default: benchmarks/results/gpu_check.json
#
# Where it runs: one CUDA GPU, a Python (3.12 expected) with its own PyTorch (>= 2.6), transformers (>= 5), timm and
# accelerate, and no internet. Whatever else the project imports (datasets, ijson, matplotlib, tensorboard, their
# dependencies) is installed, when missing, from the wheels in $TCL_WHEELS (default: data/wheels). Prepare them on a
# machine with internet and the same Python, constrained to what the GPU machine has (`pip freeze > device.txt`
# there):
#   pip download -d data/wheels --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       --platform manylinux_2_28_x86_64 -c device.txt datasets ijson matplotlib tensorboard
# The project itself is not installed: PYTHONPATH points at this checkout.
#
# What it records (each stage has its own time limit; a stage that fails is recorded with its error and the next
# one runs):
#   environment   Python, PyTorch, CUDA, the GPU's name, library versions
#   syncs         host synchronisations inside the training step, by CUDA's sync debug mode
#                 (benchmarks/count_device_syncs.py; the goal is at most one per log interval)
#   loop          the real loop at the paper size (benchmarks/bench_train_loop.py: ViT-B/16 at 256 px, BERT-base,
#                 queue 65,536, batch 64): bf16, fp32, bf16 + gradient checkpointing, bf16 + torch.compile;
#                 samples/s, MFU, peak memory, the largest bf16 batch, and the loader alone with 14 workers
#   official      the official TCL step in fp32 against ours in bf16 (benchmarks/compare_official.py --config paper),
#                 when TCL_CHECKOUT and TCL_DEPS name what that script's docstring describes; otherwise "not run"
# Targets on one H100: our bf16 loop >= 2.5 x the official fp32 step in samples/s, MFU >= 40 % in bf16, the loader
# faster than the loop.
#
# A dry run on a CPU at tiny sizes (what CI runs): TCL_GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh out.json
set -uo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-$REPO/benchmarks/results/gpu_check.json}"
DEVICE="${TCL_GPU_CHECK_DEVICE:-cuda}"
WHEELS="${TCL_WHEELS:-$REPO/data/wheels}"
WORK="$(mktemp -d)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
cd "$REPO"
mkdir -p "$(dirname "$OUT")"

if [ "$DEVICE" = cpu ]; then
  SIZE=tiny; RUNS=(fp32); STEPS=4; LOG=2; WORKERS=1; LIMIT=300; LARGEST=()
else
  SIZE=paper; RUNS=(bf16 fp32 bf16+checkpointing bf16+compile); STEPS=24; LOG=8; WORKERS=14; LIMIT=230
  LARGEST=(--largest-batch)
fi

stage() {  # stage NAME SECONDS COMMAND...: runs it, keeps its output tail, records its exit status
  local name="$1" seconds="$2"; shift 2
  echo "== $name (at most $seconds s)"
  local start=$SECONDS
  timeout "$seconds" "$@" >"$WORK/$name.log" 2>&1
  local status=$?
  echo "{\"status\": $status, \"seconds\": $((SECONDS - start))}" >"$WORK/$name.status.json"
  tail -n 15 "$WORK/$name.log"
}

missing=$(python - <<'EOF'
import importlib.util
needed = {"datasets": "datasets", "ijson": "ijson", "matplotlib": "matplotlib", "tensorboard": "tensorboard",
          "yaml": "pyyaml",
          "PIL": "pillow", "tqdm": "tqdm", "safetensors": "safetensors", "filelock": "filelock"}
print(" ".join(package for module, package in needed.items() if importlib.util.find_spec(module) is None))
EOF
)
if [ -n "$missing" ]; then
  stage install 120 pip install --no-index --find-links "$WHEELS" $missing
fi

stage environment 60 python - "$WORK/environment.json" <<'EOF'
import json, platform, sys
import accelerate, timm, torch, transformers
info = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "transformers": transformers.__version__, "timm": timm.__version__,
        "accelerate": accelerate.__version__, "gpus": torch.cuda.device_count()}
if torch.cuda.is_available():
    info.update(gpu=torch.cuda.get_device_name(0), bf16=torch.cuda.is_bf16_supported(),
                memory_gb=torch.cuda.get_device_properties(0).total_memory / 2**30)
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(json.dumps(info))
EOF

stage syncs 120 python benchmarks/count_device_syncs.py --device "$DEVICE" --json "$WORK/syncs.json" \
  --out "$WORK/syncs_run" --data "$WORK/data_tiny"

stage loop "$LIMIT" python benchmarks/bench_train_loop.py --size "$SIZE" --device "$DEVICE" --runs "${RUNS[@]}" \
  --steps "$STEPS" --log-every "$LOG" --workers "$WORKERS" --loader "${LARGEST[@]}" --data "$WORK/data_$SIZE" \
  --out "$WORK/runs" --json "$WORK/loop.json"

if [ -n "${TCL_CHECKOUT:-}" ] && [ -n "${TCL_DEPS:-}" ]; then
  stage official 150 python benchmarks/compare_official.py --tcl-checkout "$TCL_CHECKOUT" --deps "$TCL_DEPS" \
    --config "$SIZE" --precision bf16 --rounds 1 --steps 12 --device "$DEVICE" --json "$WORK/official.json"
fi

python - "$WORK" "$OUT" <<'EOF'
import json, sys, time
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
result = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": "bash benchmarks/gpu_check.sh"}
for name in ("install", "environment", "syncs", "loop", "official"):
    status = work / f"{name}.status.json"
    if not status.is_file():
        result[name] = {"status": "not run"}
        continue
    entry = json.loads(status.read_text())
    data = work / f"{name}.json"
    if data.is_file():
        entry["result"] = json.loads(data.read_text())
    if entry["status"] != 0:
        entry["log_tail"] = (work / f"{name}.log").read_text()[-3000:]
    result[name] = entry
loop = result["loop"].get("result", {})
official = result["official"].get("result", {}).get("summary", {})
bf16 = next((run for run in loop.get("runs", []) if run["run"] == "bf16"), None)
if bf16 and official:
    official_samples_per_s = official["batch"] / official["median_official_s"]
    result["targets"] = {"bf16_over_official_fp32": bf16["samples_per_s"] / official_samples_per_s}
if bf16:
    result.setdefault("targets", {})["bf16_mfu"] = bf16["mfu"]
    if "loader_samples_per_s" in loop:
        result["targets"]["loader_over_loop"] = loop["loader_samples_per_s"] / bf16["samples_per_s"]
out.write_text(json.dumps(result, indent=2))
print(f"wrote {out}")
EOF
