"""The web app of ``tcl serve`` in process: the page, the JSON API and its errors, and the cross-attention heat map
(``tcl.inference.attention``) it shows."""

import base64
import io
import json
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from tcl.config import load_config
from tcl.data.builders import build_tokenizer
from tcl.models.vqa import vqa_model_from_config
from tcl.evaluation.answers import AnswerVocabulary
from tcl.inference import TCLProcessor, VQAPipeline
from tcl.inference.attention import attention_grid, capture_cross_attention, heatmap_overlay
from tcl.inference.processor import ImageSettings
from tcl.serving.app import ServeSettings, create_app, find_examples

REPO = Path(__file__).resolve().parents[1]
ANSWERS = ["yes", "no", "red", "blue", "green", "circle", "square", "1", "2", "3"]


def tiny_pipeline(shapes_root, head: str = "classifier") -> VQAPipeline:
    config = load_config(REPO / "configs/vqa_tiny.yaml", [f"data.root={shapes_root}", f"vqa.head={head}"])
    tokenizer = build_tokenizer(config)
    torch.manual_seed(0)
    model = vqa_model_from_config(config, len(tokenizer), len(ANSWERS))
    processor = TCLProcessor(tokenizer, ImageSettings(image_size=config.model.image_size), AnswerVocabulary(ANSWERS))
    return VQAPipeline(model, processor, k_test=4)


@pytest.fixture(scope="module")
def pipeline(shapes_root):
    return tiny_pipeline(shapes_root)


@pytest.fixture(scope="module")
def examples(shapes_root):
    return find_examples(shapes_root / "images" / "val2014", limit=3)


@pytest.fixture
def client(pipeline, examples):
    return TestClient(create_app(pipeline, ServeSettings(examples=examples, max_upload_bytes=200_000,
                                                         max_image_pixels=1_000_000)))


def png(size=(64, 64), mode="RGB", colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour if mode == "RGB" else 128).save(buffer, format="PNG")
    return buffer.getvalue()


def error_of(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status and error["code"] == code
    return error["message"]


# ---------------------------------------------------------------------------------------------------------------------
# The page and the read-only routes


def test_page_has_the_upload_question_answers_and_heatmap_elements(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    for element in ('id="image-file"', 'id="examples"', 'id="question"', 'id="ask"', 'id="answers"',
                    'id="heatmap"', 'fetch("/api/vqa"'):
        assert element in response.text


def test_the_page_icon_is_served_at_both_names_browsers_ask_for(client):
    assert 'rel="icon" href="/favicon.svg"' in client.get("/").text
    for name in ("/favicon.svg", "/favicon.ico"):
        response = client.get(name)
        assert response.status_code == 200 and response.headers["content-type"].startswith("image/svg+xml")
        assert response.content.startswith(b"<svg")


def test_health_and_examples_list_only_ids_never_paths(client, examples):
    assert client.get("/api/health").json() == {"status": "ok", "head": "classifier", "answers": len(ANSWERS),
                                                "image_size": 64}
    listed = client.get("/api/examples").json()
    assert [e["id"] for e in listed] == [0, 1, 2] and all("/" not in e["name"] for e in listed)
    assert client.get(listed[1]["url"]).content == examples[1].read_bytes()
    assert "there is no example 3" in error_of(client.get("/api/examples/3"), 404, "unknown_example")
    # A path is not an id: refused by routing or validation, nothing is opened.
    error_of(client.get("/api/examples/..%2F..%2Fetc%2Fpasswd"), 404, "http_error")
    error_of(client.get("/api/examples/passwd"), 422, "invalid_request")


def test_openapi_describes_the_multipart_vqa_call(client):
    spec = client.get("/openapi.json").json()
    assert {"/api/vqa", "/api/examples", "/api/health"} <= set(spec["paths"])
    body = spec["paths"]["/api/vqa"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body
    schema_name = body["multipart/form-data"]["schema"]["$ref"].split("/")[-1]
    assert {"question", "image", "example", "top_k", "heatmap"} == \
        set(spec["components"]["schemas"][schema_name]["properties"])
    assert "VQAResponse" in spec["components"]["schemas"]
    responses = spec["paths"]["/api/vqa"]["post"]["responses"]
    assert {"200", "400", "404", "413", "422", "503"} <= set(responses)
    assert responses["413"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")


# ---------------------------------------------------------------------------------------------------------------------
# Answering


def test_upload_answers_like_the_library_with_a_heatmap(client, pipeline, examples):
    image = examples[0].read_bytes()
    response = client.post("/api/vqa", data={"question": "what color is the circle?", "top_k": "4", "heatmap": "true"},
                           files={"image": ("scene.jpg", image, "image/jpeg")})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["answers"] == pipeline(image, "what color is the circle?", top_k=4)
    scores = [a["score"] for a in result["answers"]]
    assert len(scores) == 4 and scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
    grid = torch.tensor(result["attention"]["grid"])
    assert grid.shape == (8, 8) and grid.max() == pytest.approx(1.0, abs=1e-4) and grid.min() >= 0
    header, encoded = result["attention"]["overlay_png"].split(",", 1)
    assert header == "data:image/png;base64"
    overlay = Image.open(io.BytesIO(base64.b64decode(encoded)))
    assert overlay.format == "PNG" and overlay.size == (320, 320)


def test_example_by_id_gives_the_same_answers_as_uploading_it(client, examples):
    by_id = client.post("/api/vqa", data={"question": "how many shapes are there?", "example": "2",
                                          "heatmap": "true"}).json()
    uploaded = client.post("/api/vqa", data={"question": "how many shapes are there?", "heatmap": "true"},
                           files={"image": ("x.jpg", examples[2].read_bytes(), "image/jpeg")}).json()
    assert by_id["answers"] == uploaded["answers"] and by_id["attention"] == uploaded["attention"]


@pytest.mark.parametrize("question", ["¿de qué color es el círculo? 红色 🟥", "what " * 60 + "color?"])
def test_non_ascii_and_long_questions_are_answered(client, question):
    response = client.post("/api/vqa", data={"question": question, "example": "0"})
    assert response.status_code == 200 and len(response.json()["answers"]) == 5


@pytest.mark.parametrize("size,mode", [((1, 1), "RGB"), ((900, 40), "RGB"), ((64, 64), "L"), ((64, 64), "RGBA")])
def test_images_of_odd_sizes_and_modes_are_answered(client, size, mode):
    response = client.post("/api/vqa", data={"question": "is there a red square?", "heatmap": "true"},
                           files={"image": ("odd.png", png(size, mode), "image/png")})
    assert response.status_code == 200, response.text
    ratio = max(size) / 320
    assert Image.open(io.BytesIO(base64.b64decode(response.json()["attention"]["overlay_png"].split(",")[1]))).size \
        == (max(1, round(size[0] / ratio)), max(1, round(size[1] / ratio)))


# ---------------------------------------------------------------------------------------------------------------------
# Bad requests: a JSON error with the right status, never a traceback


def test_question_errors(client):
    assert "empty" in error_of(client.post("/api/vqa", data={"question": "   ", "example": "0"}), 400,
                               "empty_question")
    assert "empty" in error_of(client.post("/api/vqa", data={"example": "0"}), 400, "empty_question")
    message = error_of(client.post("/api/vqa", data={"question": "x" * 501, "example": "0"}), 400,
                       "question_too_long")
    assert "501 characters" in message and "500" in message


def test_image_choice_errors(client):
    assert "exactly one" in error_of(client.post("/api/vqa", data={"question": "what?"}), 400, "image_required")
    both = client.post("/api/vqa", data={"question": "what?", "example": "0"},
                       files={"image": ("a.png", png(), "image/png")})
    error_of(both, 400, "image_required")
    error_of(client.post("/api/vqa", data={"question": "what?", "example": "7"}), 404, "unknown_example")
    assert "example" in error_of(client.post("/api/vqa", data={"question": "what?", "example": "../x.jpg"}), 422,
                                 "invalid_request")


@pytest.mark.parametrize("payload,reason", [(b"", "empty"), (b"this is not an image", "corrupt image"),
                                            (png()[:60], "corrupt image")])
def test_undecodable_uploads_are_refused(client, payload, reason):
    message = error_of(client.post("/api/vqa", data={"question": "what?"},
                                   files={"image": ("bad.jpg", payload, "image/jpeg")}), 400, "bad_image")
    assert reason in message


def test_pixel_limit_refuses_a_small_file_that_decodes_huge(client):
    bomb = png(size=(2000, 2000), mode="L")  # 4 million pixels in a few kilobytes
    assert len(bomb) < 200_000
    message = error_of(client.post("/api/vqa", data={"question": "what?"},
                                   files={"image": ("bomb.png", bomb, "image/png")}), 413, "image_too_large")
    assert "1,000,000 pixels" in message


def test_upload_size_limit_with_and_without_content_length(client):
    big = b"\0" * 400_000
    error_of(client.post("/api/vqa", data={"question": "what?"}, files={"image": ("big.png", big, "image/png")}),
             413, "too_large")

    def streamed():  # chunked transfer: no Content-Length, the limit is applied while reading
        boundary = b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n\r\n"
        yield boundary
        for _ in range(40):
            yield b"\0" * 10_000

    response = client.post("/api/vqa", content=streamed(),
                           headers={"content-type": "multipart/form-data; boundary=b"})
    error_of(response, 413, "too_large")


def test_top_k_bounds_and_unknown_routes(client):
    error_of(client.post("/api/vqa", data={"question": "what?", "example": "0", "top_k": "0"}), 400, "bad_top_k")
    error_of(client.post("/api/vqa", data={"question": "what?", "example": "0", "top_k": "21"}), 400, "bad_top_k")
    error_of(client.get("/api/nothing"), 404, "http_error")
    error_of(client.get("/api/vqa"), 405, "http_error")


# ---------------------------------------------------------------------------------------------------------------------
# The heat map


@pytest.mark.parametrize("shared", [False, True])
def test_captured_attention_reproduces_the_cross_attention_output(pipeline, examples, shared):
    """The probabilities recomputed by the hook, applied to the values, give exactly what the layer's SDPA gave, also
    when questions share an image (``image_index``: the keys and values are projected once and gathered)."""
    model = pipeline.model
    batch = pipeline.processor([examples[0], examples[0 if shared else 1]], ["what color is the circle?", "how many?"])
    image, index = (batch["image"][:1], torch.tensor([0, 0])) if shared else (batch["image"], None)
    outputs = []
    layer = model.fusion_encoder.layer[0].crossattention.self
    handle = layer.register_forward_hook(lambda module, args, out: outputs.append((args, out)))
    with torch.no_grad(), capture_cross_attention(model) as maps:
        model.fused_state(image, batch["input_ids"], batch["attention_mask"], image_index=index)
    handle.remove()
    assert len(maps) == len(model.fusion_encoder.layer) and maps[0].shape[0] == 2
    (hidden, context, _mask, context_index), out = outputs[0]
    assert (context_index is None) == (not shared)
    values = layer._split(layer.value(context))
    if shared:
        values = values[context_index]
    recomputed = (maps[0] @ values).transpose(1, 2).flatten(2)
    torch.testing.assert_close(recomputed, out, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones_like(maps[0].sum(-1)))
    # Hooks are gone afterwards.
    assert not layer._forward_hooks


def test_attention_grid_weights_real_tokens_and_drops_the_class_token():
    probabilities = torch.zeros(1, 2, 3, 5)  # [batch, heads, question tokens, 1 + 4 image tokens]
    probabilities[0, :, 0, 1] = 1.0          # token 0 looks at patch (0, 0)
    probabilities[0, :, 1, 4] = 1.0          # token 1 looks at patch (1, 1)
    probabilities[0, :, 2, 0] = 1.0          # a padding token looks at the class token: ignored
    grid = attention_grid([probabilities, probabilities], torch.tensor([[1, 1, 0]]))
    torch.testing.assert_close(grid, torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]))
    with pytest.raises(ValueError, match="square grid"):
        attention_grid([torch.ones(1, 1, 1, 4)], torch.ones(1, 1))


def test_overlay_colours_only_attended_regions():
    image = Image.new("RGB", (40, 20), (255, 255, 255))
    grid = torch.zeros(2, 2)
    grid[0, 0] = 1.0
    overlay = heatmap_overlay(image, grid, size=80)
    assert overlay.size == (80, 40)
    assert overlay.getpixel((79, 39)) == (255, 255, 255)  # unattended: the image unchanged
    assert overlay.getpixel((2, 2)) != (255, 255, 255)


def test_decoder_head_explains_with_its_question_forward_only(shapes_root, examples):
    decoder = tiny_pipeline(shapes_root, head="decoder")
    answers, grid = decoder.explain(examples[0], "what shape is the red object?", top_k=3)
    assert answers == decoder(examples[0], "what shape is the red object?", top_k=3)
    assert grid.shape == (8, 8) and float(grid.max()) == pytest.approx(1.0)
    assert json.dumps(answers)  # plain JSON types


@pytest.mark.parametrize("options,message", [(["--port", "70000"], "--port must be between 0 and 65535"),
                                             (["--examples", "no/such/folder"], "--examples must be a folder"),
                                             (["--max-upload-mb", "0"], "must be positive")])
def test_serve_command_line_errors_before_loading_anything(options, message, capsys):
    from tcl import cli

    assert cli.main(["serve", "--model", "no/such/model", *options]) == 2
    assert message in capsys.readouterr().err
