"""The pretraining evaluation shared by real processes (gloo over loopback): each decodes and scores its share of the
images, and every process ends with the numbers one process gets alone, also when a process holds no image."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PROCESSES = 3
OVERRIDES = ["model.queue_size=32", "loss.grounding_weight=1",
             "data.pretrain_instances=[annotations/instances_train2014.json]", "eval.retrieval_k_test=3",
             "eval.batch_size=2"]

# One process of the shared evaluation: the same randomly initialised model everywhere, its share of the set.
WORKER = textwrap.dedent("""
    import json, sys, torch, torch.distributed as dist
    import tcl.evaluation.coco_sets
    from tcl.config import load_config
    from tcl.data.builders import build_tokenizer
    from tcl.engine.evaluate_retrieval import retrieval_probe
    from tcl.engine.pretrain import build_model
    from tcl.evaluation.sharding import Shard

    rank, count, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=count)
    config = load_config(sys.argv[5], sys.argv[6:])
    tokenizer = build_tokenizer(config)
    torch.manual_seed(0)
    model = build_model(config, tokenizer, None)

    def total(tensor):
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    decoded, load = [], tcl.evaluation.coco_sets.load_rgb_image
    tcl.evaluation.coco_sets.load_rgb_image = lambda path: decoded.append(path) or load(path)  # counts the decodes
    shard = Shard(rank, count, total)
    probe = retrieval_probe(config, tokenizer, shard)
    results = {**probe(model), "decoded": len(decoded)}
    with open(out, "w") as handle:
        json.dump(results, handle)
    dist.destroy_process_group()
""")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("images", [7, 2])
def test_every_process_gets_the_single_process_numbers(shapes_root, tmp_path, images):
    """7 images over 3 processes (3, 2 and 2 each), and 2 images (the third process holds none)."""
    from tcl.config import load_config
    from tcl.data.builders import build_tokenizer
    from tcl.engine.evaluate_retrieval import retrieval_probe
    from tcl.engine.pretrain import build_model

    overrides = [f"data.root={shapes_root}", f"eval.retrieval_images={images}", *OVERRIDES]
    config_file = str(REPO / "configs/pretrain_tiny.yaml")
    port, env = free_port(), {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(rank), str(PROCESSES), str(port),
                                 str(tmp_path / f"rank{rank}.json"), config_file, *overrides], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for rank in range(PROCESSES)]
    try:
        for worker in workers:
            _, stderr = worker.communicate(timeout=300)
            assert worker.returncode == 0, stderr[-3000:]
    finally:
        for worker in workers:
            worker.kill()

    config = load_config(config_file, overrides)
    tokenizer = build_tokenizer(config)
    torch.manual_seed(0)
    alone = retrieval_probe(config, tokenizer)(build_model(config, tokenizer, None))
    assert alone["images"] == images and "grounding_iou50" in alone and "region_category_accuracy" in alone
    for rank in range(PROCESSES):
        shared = json.loads((tmp_path / f"rank{rank}.json").read_text())
        # Each process decodes only its share, once for each of the three sets (retrieval, grounding, regions).
        assert shared.pop("decoded") == 3 * len(range(rank, images, PROCESSES))
        assert shared.keys() == alone.keys()
        for key, value in alone.items():
            assert shared[key] == pytest.approx(value, abs=1e-4), key
