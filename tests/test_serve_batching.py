"""``tcl serve`` answers concurrent requests together (``tcl.serving.batching``): the batcher itself (order, one
failing request among good ones, the queue bound, closing), and the app with the tiny model: concurrent requests share
one forward pass and get the answers a lone request gets, the heat map is drawn only when asked for, a full queue
answers 503."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from fastapi.testclient import TestClient

from tcl.serving.app import ServeSettings, create_app, find_examples
from tcl.serving.batching import BatcherClosed, QueueFull, RequestBatcher
from test_serve import error_of, png, tiny_pipeline

QUESTIONS = ["what color is the circle?", "how many shapes are there?", "is there a red square?",
             "what shape is the blue object?"]


@pytest.fixture(scope="module")
def pipeline(shapes_root):
    return tiny_pipeline(shapes_root)


@pytest.fixture(scope="module")
def examples(shapes_root):
    return find_examples(shapes_root / "images" / "val2014", limit=4)


def wait_until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def same_answers(got: list[dict], expected: list[dict]) -> bool:
    return [a["answer"] for a in got] == [a["answer"] for a in expected] and \
        all(abs(a["score"] - b["score"]) <= 1e-3 for a, b in zip(got, expected))


# ---------------------------------------------------------------------------------------------------------------------
# The batcher


def test_batcher_answers_each_item_in_batches_up_to_max_batch():
    sizes = []
    gate, entered = threading.Event(), threading.Event()

    def double(items):
        entered.set()
        gate.wait(5)
        sizes.append(len(items))
        return [2 * item for item in items]

    batcher = RequestBatcher(double, max_batch=4, max_wait=0.2)
    futures = [batcher.submit(0)]
    assert entered.wait(5)  # the first item's batch (nothing else was waiting or coming) is held at the gate
    futures += [batcher.submit(k) for k in range(1, 10)]
    gate.set()
    assert [f.result(5) for f in futures] == [2 * k for k in range(10)]
    assert sizes == [1, 4, 4, 1]
    batcher.close()


def test_one_failing_item_fails_only_its_own_request():
    calls = []

    def fragile(items):
        calls.append(list(items))
        if "bad" in items:
            raise ValueError("cannot answer 'bad'")
        return [item.upper() for item in items]

    gate, entered = threading.Event(), threading.Event()
    batcher = RequestBatcher(lambda items: (entered.set(), gate.wait(5), fragile(items))[2], max_batch=8,
                             max_wait=0.2)
    first = batcher.submit("first")
    assert entered.wait(5)
    futures = [batcher.submit(item) for item in ("a", "bad", "c")]
    gate.set()
    assert first.result(5) == "FIRST"
    assert futures[0].result(5) == "A" and futures[2].result(5) == "C"
    with pytest.raises(ValueError, match="cannot answer 'bad'"):
        futures[1].result(5)
    assert calls[1] == ["a", "bad", "c"] and calls[2:] == [["a"], ["bad"], ["c"]]  # the batch, then one by one
    batcher.close()


def test_a_full_queue_refuses_at_once_and_close_fails_the_waiting_without_hanging():
    gate, entered = threading.Event(), threading.Event()
    batcher = RequestBatcher(lambda items: (entered.set(), gate.wait(30), items)[2], max_batch=1, max_queue=2)
    running = batcher.submit("running")
    assert entered.wait(5)
    waiting = [batcher.submit("w1"), batcher.submit("w2")]
    with pytest.raises(QueueFull, match="2 requests are waiting"):
        batcher.submit("one too many")
    start = time.perf_counter()
    batcher.close(timeout=0.5)  # the worker is stuck in its batch: close gives up waiting for it, it does not hang
    assert time.perf_counter() - start < 2
    for future in waiting:
        with pytest.raises(BatcherClosed):
            future.result(1)
    with pytest.raises(BatcherClosed):
        batcher.submit("after close")
    gate.set()
    assert running.result(5) == "running"  # the batch that was running finishes


def test_a_batch_waits_for_items_on_their_way_and_a_lone_item_does_not_wait():
    sizes = []
    batcher = RequestBatcher(lambda items: sizes.append(len(items)) or items, max_batch=4, max_wait=5.0)
    start = time.perf_counter()
    assert batcher.submit("alone").result(5) == "alone"
    assert time.perf_counter() - start < 1.0  # nothing was coming: no wait for max_wait
    with batcher.coming() as arrival:  # e.g. a request being decoded
        first = batcher.submit("first")
        time.sleep(0.2)
        assert not first.done()  # the batch waits for the one that is coming
        second = batcher.submit("second", arrival)
        assert (first.result(5), second.result(5)) == ("first", "second")  # it came: the batch ran in the block
    assert sizes == [1, 2]
    with batcher.coming():  # another request being decoded ...
        waiting = batcher.submit("waiting")
        time.sleep(0.2)
        assert not waiting.done()
        # ... fails to decode: it leaves without submitting, and the batch starts at once, not after max_wait
    start = time.perf_counter()
    assert waiting.result(5) == "waiting" and time.perf_counter() - start < 1.0 and sizes == [1, 2, 1]
    batcher.close()


def test_batcher_settings_are_checked():
    with pytest.raises(ValueError, match="max_batch"):
        RequestBatcher(lambda items: items, max_batch=0)


# ---------------------------------------------------------------------------------------------------------------------
# The app


def test_concurrent_requests_share_one_forward_pass_and_get_a_lone_requests_answers(pipeline, examples, monkeypatch):
    clients = 8
    expected = [pipeline(examples[k % 4].read_bytes(), QUESTIONS[k % 4], top_k=3 + k % 3) for k in range(clients)]
    _, lone_grid = pipeline.explain(examples[1].read_bytes(), QUESTIONS[1], top_k=3)
    encoded = []
    encode = pipeline.model.vision_encoder.forward_features
    monkeypatch.setattr(pipeline.model.vision_encoder, "forward_features",
                        lambda image: encoded.append(image.shape[0]) or encode(image))
    client = TestClient(create_app(pipeline, ServeSettings(examples=examples, max_batch=clients, max_wait_ms=5000)))
    start = threading.Barrier(clients)

    def ask(k: int):
        start.wait()
        return client.post("/api/vqa", data={"question": QUESTIONS[k % 4], "top_k": str(3 + k % 3),
                                             "heatmap": "true" if k == 1 else "false"},
                           files={"image": ("scene.jpg", examples[k % 4].read_bytes(), "image/jpeg")})

    # Holding one request "on its way" keeps the first batch open (up to 5 s) until all eight have arrived and fill it.
    with client.app.state.batcher.coming(), ThreadPoolExecutor(clients) as pool:
        responses = list(pool.map(ask, range(clients)))
    assert encoded == [clients]  # one forward pass, all eight images in it
    for k, response in enumerate(responses):
        assert response.status_code == 200, response.text
        assert same_answers(response.json()["answers"], expected[k]), k
        assert (response.json()["attention"] is None) == (k != 1)
    # The one heat map of the batch is the lone request's.
    torch.testing.assert_close(torch.tensor(responses[1].json()["attention"]["grid"]), lone_grid, atol=1e-3, rtol=0)


def test_the_heat_map_is_drawn_only_when_asked_for(pipeline, examples, monkeypatch):
    from tcl.serving import app as app_module

    drawn = []
    overlay = app_module.heatmap_overlay
    monkeypatch.setattr(app_module, "heatmap_overlay", lambda *a, **k: drawn.append(1) or overlay(*a, **k))
    client = TestClient(create_app(pipeline, ServeSettings(examples=examples)))
    plain = client.post("/api/vqa", data={"question": QUESTIONS[0], "example": "0"})
    assert plain.status_code == 200 and plain.json()["attention"] is None and drawn == []
    assert not pipeline.model.fusion_encoder.layer[0].crossattention.self._forward_hooks  # no hooks were left
    asked = client.post("/api/vqa", data={"question": QUESTIONS[0], "example": "0", "heatmap": "true"}).json()
    assert drawn == [1] and asked["attention"]["overlay_png"].startswith("data:image/png;base64,")
    assert asked["answers"] == plain.json()["answers"]
    error_of(client.post("/api/vqa", data={"question": QUESTIONS[0], "example": "0", "heatmap": "maybe"}), 422,
             "invalid_request")


def test_a_full_queue_answers_503_and_the_waiting_requests_are_answered(pipeline, examples, monkeypatch):
    gate, entered = threading.Event(), threading.Event()
    answer_batch = pipeline.answer_batch

    def held(*args, **kwargs):
        entered.set()
        gate.wait(30)
        return answer_batch(*args, **kwargs)

    monkeypatch.setattr(pipeline, "answer_batch", held)
    client = TestClient(create_app(pipeline, ServeSettings(examples=examples, max_batch=1, max_queue=2)))
    batcher = client.app.state.batcher
    ask = lambda: client.post("/api/vqa", data={"question": QUESTIONS[0], "example": "0"})  # noqa: E731
    with ThreadPoolExecutor(3) as pool:
        running = pool.submit(ask)
        assert entered.wait(10)
        waiting = [pool.submit(ask), pool.submit(ask)]
        wait_until(lambda: batcher.waiting == 2)
        message = error_of(ask(), 503, "busy")
        gate.set()
        statuses = [f.result(30).status_code for f in (running, *waiting)]
    assert "2 questions waiting" in message and statuses == [200, 200, 200]


def test_the_batcher_stops_with_the_app(pipeline, examples):
    with TestClient(create_app(pipeline, ServeSettings(examples=examples))) as client:
        assert client.post("/api/vqa", data={"question": QUESTIONS[0], "example": "0"}).status_code == 200
        batcher = client.app.state.batcher
    with pytest.raises(BatcherClosed):
        batcher.submit(None)


def test_max_batch_one_answers_one_request_per_forward(pipeline, examples, monkeypatch):
    encoded = []
    encode = pipeline.model.vision_encoder.forward_features
    monkeypatch.setattr(pipeline.model.vision_encoder, "forward_features",
                        lambda image: encoded.append(image.shape[0]) or encode(image))
    client = TestClient(create_app(pipeline, ServeSettings(examples=examples, max_batch=1, max_wait_ms=1000)))
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda k: client.post("/api/vqa", data={"question": QUESTIONS[k], "example": "0"}),
                                  range(4)))
    assert [r.status_code for r in responses] == [200] * 4 and encoded == [1] * 4


def test_serve_refuses_bad_batching_options(capsys):
    from tcl import cli

    assert cli.main(["serve", "--model", "no/such/model", "--max-batch", "0"]) == 2
    assert "--max-batch and --max-queue must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["serve", "--model", "m", "--precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


def test_uploads_of_odd_images_in_one_batch(pipeline):
    client = TestClient(create_app(pipeline, ServeSettings(max_batch=4, max_wait_ms=2000)))
    sizes = [((1, 1), "RGB"), ((900, 40), "RGB"), ((64, 64), "L"), ((64, 64), "RGBA")]
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda s: client.post("/api/vqa", data={"question": "is there a red square?"},
                                                        files={"image": ("odd.png", png(*s), "image/png")}), sizes))
    assert [r.status_code for r in responses] == [200] * 4
