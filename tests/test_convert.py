"""Import of the official TCL/ALBEF checkpoints: the rename table against the official key/shape list (base
configuration, on the meta device so no memory is spent), value routing on a tiny model, VQA checkpoints, unsafe
pickles, and ``tcl convert``."""

import json
from pathlib import Path

import pytest
import torch

import tcl
from tcl import cli
from tcl.config import LossConfig, load_config
from tcl.errors import TclError
from tcl.models import TCLPretrainModel
from tcl.models.convert import convert_pretrain_state, convert_vqa_state, infer_model_config
from tcl.models.vqa import TCLVQAModel

REPO = Path(__file__).resolve().parents[1]
# The official checkpoints have the linear patch embedding (the tiny configs use a convolutional stem).
OFFICIAL_STEM = ["model.vision_stem=patch"]
# The shared design fixture when the checkout has ../shared beside it, else the copy kept with the tests (so CI on a
# bare clone runs the check too).
FIXTURE = next(path for path in (REPO.parent / "shared/fixtures/tcl_pretrain_base_state_dict.json",
                                 REPO / "tests/fixtures/tcl_pretrain_base_state_dict.json") if path.exists())


def official_meta_state() -> dict:
    """Every key of the official checkpoint with its shape and dtype, as storage-free meta tensors."""
    spec = json.loads(FIXTURE.read_text())["tensors"]
    assert len(spec) == json.loads(FIXTURE.read_text())["num_tensors"]
    return {key: torch.empty(info["shape"], dtype=getattr(torch, info["dtype"]), device="meta")
            for key, info in spec.items()}


@pytest.mark.parametrize("image_size", [None, 384])
def test_official_base_checkpoint_converts_and_loads_strictly(image_size):
    official = official_meta_state()
    config = infer_model_config(official, image_size)
    paper = load_config(REPO / "configs/pretrain_4m.yaml").model
    for field in ("patch_size", "vision_width", "vision_depth", "vision_heads", "hidden_size", "num_hidden_layers",
                  "num_attention_heads", "intermediate_size", "max_position_embeddings", "fusion_layer",
                  "vocab_size", "embed_dim", "queue_size"):
        assert getattr(config, field) == getattr(paper, field), field
    assert config.image_size == (image_size or 256)
    converted = convert_pretrain_state(official, config)
    with torch.device("meta"):
        model = TCLPretrainModel(config, LossConfig(), config.vocab_size)
    model.load_state_dict(converted, strict=True, assign=True)  # raises on any missing/unexpected key or shape
    grid = (config.image_size // 16) ** 2
    assert converted["vision_encoder.pos_embed"].shape == (1, 1 + grid, 768)
    assert converted["momentum.models.vision_encoder.pos_embed"].shape == (1, 1 + grid, 768)
    assert converted["fusion_encoder.layer.5.crossattention.self.key.weight"].shape == (768, 768)
    assert converted["temp"].shape == (1,)


def official_layout(model: TCLPretrainModel, fusion_layer: int) -> dict:
    """Our tiny model's weights under the official names (written independently of the converter's table)."""
    ours = model.state_dict()
    out = {"temp": ours["temp"].reshape(()), "image_queue": ours["image_queue.queue"],
           "text_queue": ours["text_queue.queue"], "queue_ptr": ours["image_queue.ptr"]}
    for copy, official_suffix in (("", ""), ("momentum.models.", "_m")):
        for key, value in ours.items():
            if not key.startswith(copy) or (copy == "" and key.startswith("momentum.")):
                continue
            name = key[len(copy):]
            head, _, rest = name.partition(".")
            if head == "vision_encoder":
                out[f"visual_encoder{official_suffix}.{rest}"] = value
            elif head in ("vision_proj", "text_proj"):
                out[f"{head}{official_suffix}.{rest}"] = value
            elif head == "itm_head" and not copy:
                out[name] = value
            elif head == "text_encoder" and rest.startswith("embeddings."):
                out[f"text_encoder{official_suffix}.bert.{rest}"] = value
            elif head == "text_encoder":
                n, tail = rest.split(".")[2], ".".join(rest.split(".")[3:])
                out[f"text_encoder{official_suffix}.bert.encoder.layer.{n}.{tail}"] = value
            elif head == "fusion_encoder":
                n, tail = int(rest.split(".")[1]), ".".join(rest.split(".")[2:])
                out[f"text_encoder{official_suffix}.bert.encoder.layer.{n + fusion_layer}.{tail}"] = value
            elif head == "mlm_head":
                out[f"text_encoder{official_suffix}.cls.{rest}"] = value
    for suffix in ("", "_m"):  # the official extras: a position-id buffer and the decoder-bias alias
        out[f"text_encoder{suffix}.bert.embeddings.position_ids"] = torch.arange(64)[None]
        out[f"text_encoder{suffix}.cls.predictions.decoder.bias"] = out[f"text_encoder{suffix}.cls.predictions.bias"]
    return out


def tiny_pretrain_model(seed=0, vocab_size=50):
    config = load_config(REPO / "configs/pretrain_tiny.yaml", ["model.queue_size=32", *OFFICIAL_STEM])
    torch.manual_seed(seed)
    model = TCLPretrainModel(config.model, config.loss, vocab_size)
    with torch.no_grad():  # make the momentum copy differ from the online weights, so routing errors show
        for p in model.momentum.parameters():
            p.add_(torch.randn_like(p))
    return model


def test_values_land_where_they_belong(tmp_path):
    model = tiny_pretrain_model()
    official = official_layout(model, model.model_config.fusion_layer)
    torch.save({"model": official, "epoch": 3, "config": {"lr": 1e-4}}, tmp_path / "tcl.pth")
    loaded = tcl.load_pretrained(tmp_path / "tcl.pth")  # converted on the fly
    assert isinstance(loaded, TCLPretrainModel) and loaded.processor is None
    ours = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, ours[key]), key
    assert loaded.mlm_head.predictions.decoder.weight is loaded.text_encoder.embeddings.word_embeddings.weight
    assert loaded.model_config.fusion_layer == 2 and loaded.model_config.image_size == 64


def test_unknown_keys_fail_the_conversion():
    model = tiny_pretrain_model()
    official = official_layout(model, 2)
    official["text_encoder.bert.pooler.dense.weight"] = torch.zeros(4, 4)
    with pytest.raises(TclError, match="1 checkpoint keys have no place.*pooler"):
        convert_pretrain_state(official, infer_model_config(official))


def test_pretraining_checkpoint_to_vqa_initialises_the_decoder_from_the_fusion_layers(tmp_path):
    model = tiny_pretrain_model()
    torch.save({"model": official_layout(model, 2)}, tmp_path / "albef.pth")
    vqa = TCLVQAModel.from_pretrained(tmp_path / "albef.pth", num_answers=7)
    assert vqa.head == "decoder" and vqa.num_answers == 7
    assert torch.equal(vqa.text_decoder.bert.encoder.layer[1].crossattention.output.dense.weight,
                       model.fusion_encoder.layer[1].crossattention.output.dense.weight)
    assert torch.equal(vqa.text_decoder.cls.predictions.bias, model.mlm_head.predictions.bias)


def test_official_vqa_checkpoint_imports(tmp_path):
    config = load_config(REPO / "configs/vqa_tiny.yaml", ["vqa.head=decoder", *OFFICIAL_STEM])
    torch.manual_seed(1)
    ours = TCLVQAModel(config.model, 50, 5, head="decoder")
    official = {}
    for key, value in ours.state_dict().items():  # the VQA layout: text_encoder without "bert.", all 4 layers
        head, _, rest = key.partition(".")
        if head == "vision_encoder":
            official[f"visual_encoder.{rest}"] = value
        elif head == "text_encoder":
            official[f"text_encoder.{rest}"] = value
        elif head == "fusion_encoder":
            n, tail = int(rest.split(".")[1]), ".".join(rest.split(".")[2:])
            official[f"text_encoder.encoder.layer.{n + 2}.{tail}"] = value
        else:
            official[key] = value
    official["text_decoder_m.bert.embeddings.word_embeddings.weight"] = torch.zeros(50, 128)  # training-only copy
    converted = convert_vqa_state(official, infer_model_config(official))
    loaded = TCLVQAModel(config.model, 50, 5, head="decoder")
    loaded.load_state_dict(converted, strict=True)
    for key, value in ours.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_convert_command_writes_a_loadable_pipeline(shapes_root, tmp_path, capsys):
    from tcl.data.tokenizer import load_tokenizer

    model = tiny_pretrain_model(vocab_size=len(load_tokenizer(shapes_root / "tokenizer")))
    torch.save({"model": official_layout(model, 2)}, tmp_path / "tcl.pth")
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps(["yes", "no", "2", "red", "circle"]))
    out = tmp_path / "converted_vqa"
    assert cli.main(["convert", "--from", "tcl", str(tmp_path / "tcl.pth"), "--out", str(out), "--task", "vqa",
                     "--image-size", "96", "--answer-list", str(answers), "--tokenizer",
                     str(shapes_root / "tokenizer"), "--k-test", "3"]) == 0
    vqa = tcl.load_vqa(out)
    assert vqa.model.model_config.image_size == 96 and vqa.k_test == 3
    image = shapes_root / "images/val2014/COCO_val2014_000000500001.jpg"
    answers_out = vqa(image, "what color is the circle?", top_k=3)
    assert len(answers_out) == 3 and {a["answer"] for a in answers_out} <= {"yes", "no", "2", "red", "circle"}
    pre = tmp_path / "converted_pre"
    assert cli.main(["convert", "--from", "albef", str(tmp_path / "tcl.pth"), "--out", str(pre)]) == 0
    assert "no processor written" in capsys.readouterr().out
    assert tcl.load_pretrained(pre).processor is None
    assert cli.main(["convert", "--from", "tcl", str(tmp_path / "tcl.pth"), "--out", str(pre), "--task",
                     "vqa"]) == 2
    assert "--answer-list" in capsys.readouterr().err
