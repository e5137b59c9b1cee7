"""Requests per second of ``tcl serve`` under concurrent clients, batched and one request at a time, and the time per
question of ``tcl predict`` in batch mode, each against the code before request batching if you give its checkout.

    git archive HEAD | tar -x -C /tmp/before          # the code to compare with (optional)
    taskset -c 1 python benchmarks/bench_serve.py --data-root data/shapes --before /tmp/before --json out.json
    python benchmarks/bench_serve.py --parts serve --clients 1 8 --seconds 3

The model is the tiny VQA configuration with random weights and the data root's tokenizer (its answers do not matter
here). ``serve``: each arm starts ``tcl serve`` in its own process and, per number of clients, runs that many client
threads in this process, each posting an uploaded val image and a question (no heat map; the code before draws one
for every request, which is part of what it costs) in a loop for ``--seconds`` after a one-second warm-up; the table
gives requests/s and the median latency. Clients and server share the CPUs they are given (with ``taskset -c 1``: one
core), so the client's own cost is in every arm alike. ``predict``: a generated question file
(``--predict-images`` images of ``--predict-size`` pixels, about 5.4 questions each) answered through ``tcl predict``'s
entry point in a fresh process per arm and round; the time per question is (time for the file - time for its first
line) / (lines - 1), both timed in that process after a warm-up, so that imports and model loading drop out; the arms
alternate over ``--rounds`` and the medians are reported.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = ["what color is the circle?", "how many shapes are there?", "is there a red square?",
             "what shape is the blue object?"]


def tiny_model(folder: Path, data_root: Path) -> Path:
    """``benchmarks/bench_startup.py``'s tiny random VQA model, saved for ``tcl.load_vqa``."""
    spec = importlib.util.spec_from_file_location("bench_startup", REPO / "benchmarks" / "bench_startup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.tiny_model(folder, data_root)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def code_env(checkout: Path) -> dict:
    """The environment that makes ``python -m tcl`` run the code of ``checkout`` (before the editable install)."""
    return {**os.environ, "PYTHONPATH": str(checkout)}


class Server:
    """``tcl serve`` of ``checkout`` in a subprocess on a free loopback port."""

    def __init__(self, model: Path, checkout: Path, options: list[str]):
        self.url = f"http://127.0.0.1:{free_port()}"
        command = [sys.executable, "-m", "tcl", "serve", "--model", str(model), "--port", self.url.rsplit(":", 1)[1],
                   *options]
        self.process = subprocess.Popen(command, cwd=checkout, env=code_env(checkout), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"tcl serve exited with code {self.process.returncode}: "
                                 f"{self.process.stderr.read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/health", timeout=2):
                    return self
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"tcl serve did not answer on {self.url} within 120 s")

    def __exit__(self, *_exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def load(url: str, images: list[bytes], clients: int, seconds: float, warmup: float = 1.0) -> dict:
    """Requests/s and latencies of ``clients`` threads posting in a loop for ``seconds`` (after ``warmup``)."""
    import httpx

    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds
    latencies: list[float] = []
    failures: list[int] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(timeout=120) as session:
            n = k
            while time.perf_counter() < stop_at:
                sent = time.perf_counter()
                response = session.post(f"{url}/api/vqa", data={"question": QUESTIONS[n % 4], "top_k": "5"},
                                        files={"image": ("scene.jpg", images[n % len(images)], "image/jpeg")})
                done = time.perf_counter()
                n += clients
                if sent >= measure_from and done <= stop_at:
                    with lock:
                        (latencies.append(done - sent) if response.status_code == 200 else
                         failures.append(response.status_code))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"{len(failures)} requests failed with {sorted(set(failures))}")
    return {"clients": clients, "requests": len(latencies), "requests_per_s": len(latencies) / seconds,
            "median_latency_ms": 1000 * statistics.median(latencies) if latencies else None}


def bench_serve(model: Path, data_root: Path, before: Path | None, clients: list[int], seconds: float) -> list[dict]:
    images = [path.read_bytes() for path in sorted((data_root / "images" / "val2014").glob("*.jpg"))[:8]]
    arms = {"batched (--max-batch 16, default)": (REPO, ["--max-batch", "16"]),
            "one at a time (--max-batch 1)": (REPO, ["--max-batch", "1"])}
    if before is not None:
        arms["before (one at a time, heat map always)"] = (before, [])
    rows = []
    for arm, (checkout, options) in arms.items():
        with Server(model, checkout, options) as server:
            for count in clients:
                rows.append({"arm": arm, **load(server.url, images, count, seconds)})
                print(f"serve | {arm} | {count} clients | {rows[-1]['requests_per_s']:.1f} req/s", file=sys.stderr)
    return rows


def question_file(folder: Path, images: int, size: int) -> Path:
    """A ``tcl predict`` input from a generated data set: every val question, in the data's order."""
    from tcl.make_data import make_shapes_dataset

    make_shapes_dataset(folder, show_progress=False, train_images=0, val_images=images, image_size=size,
                        questions_per_image=6, seed=5)
    questions = json.loads((folder / "annotations/v2_OpenEnded_mscoco_val2014_questions.json").read_text())
    path = folder / "questions.jsonl"
    path.write_text("".join(json.dumps({"id": q["question_id"], "question": q["question"],
                                        "image": f"images/val2014/COCO_val2014_{q['image_id']:012d}.jpg"}) + "\n"
                            for q in questions["questions"]))
    return path


# Runs in a fresh interpreter with the checkout's code: the first line once to warm up, then the file and the first
# line again, each timed through the command line's own entry point (model loading included in both).
PREDICT_DRIVER = """
import json, sys, time
from tcl.cli import main
model, questions, first, out, *options = sys.argv[1:]

def timed(path):
    start = time.perf_counter()
    if main(["predict", "--model", model, "--input", path, "--output", out, *options]) != 0:
        raise SystemExit("tcl predict failed on " + path)
    return time.perf_counter() - start

timed(first)
print(json.dumps({"file": timed(questions), "first": timed(first)}))
"""


def predict_seconds(model: Path, checkout: Path, questions: Path, first: Path, options: list[str]) -> dict:
    result = subprocess.run([sys.executable, "-c", PREDICT_DRIVER, str(model), str(questions), str(first),
                             str(questions.with_suffix(".out")), *options], cwd=checkout, env=code_env(checkout),
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"tcl predict failed ({result.returncode}): {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def bench_predict(model: Path, before: Path | None, scratch: Path, images: int, size: int, rounds: int) -> list[dict]:
    questions = question_file(scratch / "predict_data", images, size)
    first = questions.with_name("first.jsonl")
    first.write_text(questions.read_text().splitlines()[0] + "\n")
    lines = len(questions.read_text().splitlines())
    arms = {"--workers 0": (REPO, ["--workers", "0"]), "--workers default": (REPO, [])}
    if before is not None:
        arms["before (per-question images, no loader)"] = (before, [])
    times: dict[str, dict[str, list[float]]] = {arm: {"file": [], "first": []} for arm in arms}
    for _ in range(rounds):
        for arm, (checkout, options) in arms.items():
            measured = predict_seconds(model, checkout, questions, first, options)
            for key in ("file", "first"):
                times[arm][key].append(measured[key])
    rows = []
    for arm, measured in times.items():
        file_s, first_s = statistics.median(measured["file"]), statistics.median(measured["first"])
        rows.append({"arm": arm, "questions": lines, "images": images, "image_size": size, "file_s": file_s,
                     "first_line_s": first_s, "ms_per_question": 1000 * (file_s - first_s) / (lines - 1)})
        print(f"predict | {arm} | {rows[-1]['ms_per_question']:.2f} ms/question", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="data/shapes", help="generated data: tokenizer and val images")
    parser.add_argument("--before", type=Path, default=None, help="a checkout of the code to compare with")
    parser.add_argument("--parts", nargs="+", choices=("serve", "predict"), default=["serve", "predict"])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per arm and client count")
    parser.add_argument("--predict-images", type=int, default=200)
    parser.add_argument("--predict-size", type=int, default=256, help="side of the generated images in pixels")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each predict arm (median)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    result = {"machine": platform.processor() or platform.machine(), "cpus": len(os.sched_getaffinity(0))}
    with tempfile.TemporaryDirectory() as scratch:
        model = tiny_model(Path(scratch) / "model", Path(args.data_root).resolve())
        if "serve" in args.parts:
            result["serve"] = bench_serve(model, Path(args.data_root), args.before, args.clients, args.seconds)
        if "predict" in args.parts:
            result["predict"] = bench_predict(model, args.before, Path(scratch), args.predict_images,
                                              args.predict_size, args.rounds)
    if "serve" in result:
        print("| server | clients | requests/s | median latency |\n|---|---|---|---|")
        for row in result["serve"]:
            print(f"| {row['arm']} | {row['clients']} | {row['requests_per_s']:.1f} | "
                  f"{row['median_latency_ms']:.0f} ms |")
    if "predict" in result:
        print("| tcl predict | questions (images) | ms per question | whole file |\n|---|---|---|---|")
        for row in result["predict"]:
            print(f"| {row['arm']} | {row['questions']} ({row['images']} of {row['image_size']} px) | "
                  f"{row['ms_per_question']:.2f} | {row['file_s']:.1f} s |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
