"""The server under slow clients, many connections, huge images and bytes that are not UTF-8: a real uvicorn
server on 127.0.0.1 with the protocol and limits ``tcl serve`` uses (shorter timeouts, so the test is quick)."""

import json
import socket
import subprocess
import sys
import threading
import time

import pytest
import starlette.formparsers
import starlette.requests
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from tcl.serving.app import ServeSettings, create_app, find_examples
from tcl.serving.forms import TextFieldCheck
from tcl.serving.protocol import HeadDeadlineProtocol
from test_serve import error_of, png, tiny_pipeline


class QuickDeadline(HeadDeadlineProtocol):
    head_timeout = 1.0


@pytest.fixture(scope="module")
def pipeline(shapes_root):
    return tiny_pipeline(shapes_root)


@pytest.fixture
def server(pipeline):
    """Starts a server; returns its port. ``limit`` connections at most, bodies within 1 s."""
    started = []

    def start(limit: int = 64, protocol=QuickDeadline):
        settings = ServeSettings(body_timeout=1.0, max_connections=limit)
        config = uvicorn.Config(create_app(pipeline, settings), host="127.0.0.1", port=0, http=protocol,
                                limit_concurrency=limit, timeout_keep_alive=5, log_level="warning")
        instance = uvicorn.Server(config)
        thread = threading.Thread(target=instance.run, daemon=True)
        thread.start()
        while not instance.started:
            time.sleep(0.02)
        started.append((instance, thread))
        return instance.servers[0].sockets[0].getsockname()[1]

    yield start
    for instance, thread in started:
        instance.should_exit = True
        thread.join(timeout=10)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def closed_within(connection: socket.socket, seconds: float) -> bool:
    connection.settimeout(seconds)
    try:
        while connection.recv(4096):
            pass
        return True
    except socket.timeout:
        return False


def test_slow_and_idle_request_heads_are_closed(server):
    port = server()
    drip = connect(port)
    drip.sendall(b"GET /api/health HTTP/1.1\r\n")  # ... and the rest never comes
    idle = [connect(port) for _ in range(20)]  # half-open: nothing sent at all
    start = time.perf_counter()
    assert closed_within(drip, 5) and all(closed_within(c, 5) for c in idle)
    assert time.perf_counter() - start < 5
    with connect(port) as healthy:  # the server still answers
        healthy.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert b"200 OK" in healthy.recv(4096)


def read_response(connection: socket.socket) -> tuple[bytes, bytes]:
    """The status line and the body of one HTTP response (by its Content-Length)."""
    connection.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += connection.recv(65536)
    return head.split(b"\r\n")[0], body


def test_a_dripping_body_gets_408(server):
    port = server()
    with connect(port) as client:
        client.sendall(b"POST /api/vqa HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                       b"Content-Length: 5000\r\n\r\n--b\r\n")
        status, body = read_response(client)
    assert b"408" in status and json.loads(body)["error"]["code"] == "too_slow"


def test_connections_beyond_the_limit_get_503(server):
    class Patient(HeadDeadlineProtocol):
        head_timeout = 30.0

    port = server(limit=4, protocol=Patient)
    held = [connect(port) for _ in range(4)]
    time.sleep(0.2)
    with connect(port) as extra:
        extra.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"503" in extra.recv(4096).split(b"\r\n")[0]
    for connection in held:
        connection.close()


def test_form_fields_that_are_not_utf8_are_refused(pipeline):
    client = TestClient(create_app(pipeline, ServeSettings()))
    body = (b"--b\r\nContent-Disposition: form-data; name=\"question\"\r\n\r\nwhat \xff\xfe color?\r\n"
            b"--b\r\nContent-Disposition: form-data; name=\"example\"\r\n\r\n0\r\n--b--\r\n")
    response = client.post("/api/vqa", content=body, headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert response.status_code == 400 and "not valid UTF-8" in response.json()["error"]["message"]
    encoded = client.post("/api/vqa", content=b"question=what+%FF+color%3F&example=0",  # a percent-escape, not UTF-8
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert encoded.status_code == 400 and encoded.json()["error"]["code"] == "bad_question"


def test_multipart_text_fields_in_utf8_are_read_and_file_bytes_are_not_checked(pipeline):
    client = TestClient(create_app(pipeline, ServeSettings()))
    question = "¿de qué color es el círculo? 红色 🟥"  # "é" is also Latin-1's 0xe9: only the bytes tell which
    upload = png()  # starts with 0x89, which is not UTF-8
    response = client.post("/api/vqa", data={"question": question}, files={"image": ("x.png", upload, "image/png")})
    assert response.status_code == 200 and response.json()["question"] == question


@pytest.mark.parametrize("text,valid", [("qué 红 🟥".encode(), True), (b"qu\xe9", False), (b"\xc3", False)])
def test_text_field_check_decodes_fields_split_across_chunks(text, valid):
    body = (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x\"\r\n\r\n\xff\xfe\r\n"
            b"--b\r\nContent-Disposition: form-data; name=\"question\"\r\n\r\n" + text + b"\r\n--b--\r\n")
    check = TextFieldCheck.for_content_type("multipart/form-data; boundary=b")

    def feed_byte_by_byte():
        for n in range(len(body)):
            check.write(body[n:n + 1])

    if valid:
        feed_byte_by_byte()
    else:
        with pytest.raises(UnicodeDecodeError):
            feed_byte_by_byte()
        assert check.field_name == "question"


def test_create_app_replaces_nothing_in_starlette(pipeline):
    modules = (starlette.formparsers, starlette.requests)
    before = [dict(vars(module)) for module in modules]
    create_app(pipeline, ServeSettings())
    assert [dict(vars(module)) for module in modules] == before  # functions are equal only to themselves
    assert starlette.formparsers._user_safe_decode is before[0]["_user_safe_decode"]


MEASURE = """
import sys
from tcl.data.images import as_rgb_image


def status(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))


data = open(sys.argv[1], "rb").read()
open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the current RSS
before = status("VmRSS:")
image = as_rgb_image(data, max_pixels=None, max_side=None if sys.argv[2] == "full" else 1024)
print(image.size[0], image.size[1], (status("VmHWM:") - before) // 1024)
"""


def test_huge_uploads_are_decoded_small(tmp_path):
    path = tmp_path / "huge.jpg"
    Image.new("RGB", (6300, 6300), (200, 30, 30)).save(path, quality=50)  # 119 million pixels, a few hundred KB
    runs = {mode: subprocess.run([sys.executable, "-c", MEASURE, str(path), mode], capture_output=True, text=True,
                                 check=True).stdout.split() for mode in ("full", "small")}
    full, small = ([int(v) for v in runs[mode]] for mode in ("full", "small"))
    assert full[:2] == [6300, 6300] and max(small[:2]) == 1024
    assert full[2] > 100 and small[2] < full[2] / 4, (full, small)  # MB of peak memory added by the decode


def test_questions_the_model_cannot_take(pipeline, shapes_root, monkeypatch):
    examples = find_examples(shapes_root / "images" / "val2014", limit=1)
    client = TestClient(create_app(pipeline, ServeSettings(examples=examples)))
    message = error_of(client.post("/api/vqa", data={"question": "?!...", "example": "0"}), 400, "bad_question")
    assert "empty after normalisation" in message
    gibberish = " ".join(["qwertyuiopasdfghjklzxcvbnm"] * 3)  # word pieces past the 64 positions: cut, answered
    assert client.post("/api/vqa", data={"question": gibberish, "example": "0"}).status_code == 200
    monkeypatch.setattr(pipeline, "answer_batch", lambda *a, **k: 1 / 0)  # any unforeseen failure: the same JSON shape
    broken = TestClient(create_app(pipeline, ServeSettings(examples=examples)), raise_server_exceptions=False)
    assert "ZeroDivisionError" in error_of(broken.post("/api/vqa", data={"question": "what?", "example": "0"}), 500,
                                           "internal_error")
