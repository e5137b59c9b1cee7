"""The paper configs with the hub out of reach: every pretrained part from local files (each accepted format, the
hub's cache included), the hub's offline mode honoured with no connection attempted, one message naming whatever
is missing (exit status 2, before any work), and a pretraining step of the paper config from a folder laid out as
`tcl fetch-pretrained` writes it (random tiny weights saved by the same code)."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForMaskedLM, BertTokenizer

from tcl.cli import main as tcl_main
from tcl.config import ModelConfig, load_config
from tcl.models.pretrained import load_vision_pretrained
from tcl.models.vision import build_vision_encoder
from tcl.pretrained_parts import (MissingPretrainedPart, check_parts, config_parts, locate, text_part, tokenizer_part,
                                  write_parts)

REPO = Path(__file__).resolve().parents[1]
VISION_ARGS = dict(img_size=32, embed_dim=32, depth=1, num_heads=2)
# The paper config at the tiny parts' sizes, on the generated data.
PAPER_AT_TINY_SIZES = ["model.image_size=32", "model.vision_width=32", "model.vision_depth=1", "model.vision_heads=2",
                       "model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=2",
                       "model.intermediate_size=64", "model.max_position_embeddings=64", "model.fusion_layer=1",
                       "model.vocab_size=null", "model.embed_dim=16", "model.queue_size=16", "train.batch_size=8",
                       "data.num_workers=0", "data.pretrain_source=coco",
                       "data.pretrain_files=[annotations/captions_train2014.json]", "eval.retrieval_file=null"]


@pytest.fixture(scope="module")
def fetched(tmp_path_factory, shapes_root) -> Path:
    """A folder as `tcl fetch-pretrained` writes it, from random tiny DeiT and BERT models and the data's tokenizer."""
    out = tmp_path_factory.mktemp("fetched")
    torch.manual_seed(0)
    tokenizer = BertTokenizer.from_pretrained(str(shapes_root / "tokenizer"))
    bert = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))
    write_parts(out, vision=timm.create_model("deit_base_patch16_224", **VISION_ARGS), text=bert,
                tokenizer=tokenizer, vision_args=VISION_ARGS)
    return out


@pytest.fixture
def no_network(monkeypatch, tmp_path) -> list:
    """The hub offline (``HF_HUB_OFFLINE=1``), an empty hub cache, and every socket connection refused and recorded."""
    from huggingface_hub import constants

    attempts = []

    def refuse(self, address, *args):
        attempts.append(address)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub_cache"))
    return attempts


def hub_cache_entry(cache: Path, repo: str, files: dict[str, Path]) -> None:
    """Lays ``files`` out as huggingface_hub caches them: models--org--name/refs/main and snapshots/<commit>/."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        shutil.copy(source, folder / "snapshots" / commit / name)


def tiny_encoder():
    return build_vision_encoder(ModelConfig(image_size=32, patch_size=16, vision_width=32, vision_depth=1,
                                            vision_heads=2))


def test_a_fetched_folder_loads_through_timm_and_transformers_with_the_hub_offline(fetched, shapes_root, no_network):
    saved = load_file(str(fetched / "vision" / "model.safetensors"))
    vision = timm.create_model(f"local-dir:{fetched / 'vision'}", pretrained=True)
    assert torch.equal(vision.state_dict()["blocks.0.attn.qkv.weight"], saved["blocks.0.attn.qkv.weight"])
    bert = BertForMaskedLM.from_pretrained(str(fetched / "text"))
    assert bert.config.hidden_size == 32
    tokenizer = BertTokenizer.from_pretrained(str(fetched / "tokenizer"))
    assert len(tokenizer) == len(BertTokenizer.from_pretrained(str(shapes_root / "tokenizer")))
    assert no_network == []


def test_the_image_encoder_loads_from_every_accepted_format(fetched, tmp_path, no_network):
    from huggingface_hub import constants

    state = load_file(str(fetched / "vision" / "model.safetensors"))
    torch.save(state, tmp_path / "deit.pth")
    torch.save({"model": state}, tmp_path / "official_layout.pth")
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "bin_folder").mkdir()
    shutil.copy(tmp_path / "pytorch_model.bin", tmp_path / "bin_folder" / "pytorch_model.bin")
    hub_cache_entry(Path(constants.HF_HUB_CACHE), "timm/deit_base_patch16_224.fb_in1k",
                    {"model.safetensors": fetched / "vision" / "model.safetensors"})
    cache_folder = Path(constants.HF_HUB_CACHE) / "models--timm--deit_base_patch16_224.fb_in1k"
    sources = [fetched / "vision" / "model.safetensors", fetched / "vision", tmp_path / "deit.pth",
               tmp_path / "official_layout.pth", tmp_path / "pytorch_model.bin", tmp_path / "bin_folder",
               cache_folder, "deit_base_patch16_224.fb_in1k"]  # the last: a timm name, found in the hub's cache
    for source in sources:
        encoder = tiny_encoder()
        load_vision_pretrained(encoder, str(source))
        assert torch.equal(encoder.state_dict()["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"]), source
    assert no_network == []


def test_bert_and_its_tokenizer_by_hub_name_come_from_the_cache_offline(fetched, no_network):
    from huggingface_hub import constants

    files = {path.name: path for folder in ("text", "tokenizer") for path in (fetched / folder).iterdir()}
    hub_cache_entry(Path(constants.HF_HUB_CACHE), "bert-base-uncased", files)
    found = check_parts([text_part("bert-base-uncased"), tokenizer_part("bert-base-uncased")])
    assert all(folder.parent.name == "snapshots" for folder in found.values())
    assert BertForMaskedLM.from_pretrained(str(locate(text_part("bert-base-uncased")))).config.hidden_size == 32
    assert no_network == []


def test_offline_with_nothing_cached_names_every_missing_part_and_the_ways_forward(no_network):
    config = load_config(REPO / "configs/pretrain_4m.yaml")
    with pytest.raises(MissingPretrainedPart) as missing:
        check_parts(config_parts(config))
    message = str(missing.value)
    for expected in ("model.vision_pretrained=deit_base_patch16_224.fb_in1k", "model.text_pretrained=bert-base-uncased",
                     "data.tokenizer=bert-base-uncased", "the hub is offline", "tcl fetch-pretrained",
                     "model.vision_pretrained=DIR/vision model.text_pretrained=DIR/text data.tokenizer=DIR/tokenizer"):
        assert expected in message
    assert no_network == []


def test_a_missing_part_stops_the_commands_with_status_2_before_any_work(shapes_root, tmp_path, no_network, capsys):
    out = tmp_path / "run"
    paper = ["--config", "pretrain_4m", f"data.root={shapes_root}", f"train.output_dir={out}"]
    assert tcl_main(["pretrain", *paper]) == 2
    assert tcl_main(["fetch-pretrained", "--config", "pretrain_4m", "--out", str(tmp_path / "parts")]) == 2
    assert tcl_main(["finetune-vqa", "--config", "vqa", f"data.root={shapes_root}", f"train.output_dir={out}",
                     "vqa.init=null", f"model.text_pretrained={tmp_path / 'nowhere'}"]) == 2
    errors = capsys.readouterr().err
    assert errors.count("error: pretrained parts are missing") == 3 and "Traceback" not in errors
    assert f"BERT weights (model.text_pretrained={tmp_path / 'nowhere'}): {tmp_path / 'nowhere'} does not exist" \
        in errors
    assert not out.exists() and not (tmp_path / "parts").exists()
    assert no_network == []


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_the_paper_config_pretrains_from_a_fetched_folder_with_the_hub_offline(fetched, shapes_root, tmp_path,
                                                                             no_network):
    from tcl.engine.commands import pretrain as main

    out = tmp_path / "run"
    overrides = (fetched / "overrides.txt").read_text().split()
    assert len(overrides) == 3
    frozen = ["train.lr=1e-12", "train.warmup_lr=1e-12", "train.min_lr=1e-12"]  # the weights stay as loaded
    assert main(["--config", str(REPO / "configs/pretrain_4m.yaml"), f"data.root={shapes_root}",
                 f"train.output_dir={out}", *PAPER_AT_TINY_SIZES, *overrides, *frozen, "train.max_steps=1"]) == 0
    trained = load_file(str(next(out.glob("checkpoint-*")) / "model.safetensors"))
    vision = load_file(str(fetched / "vision" / "model.safetensors"))
    bert = load_file(str(fetched / "text" / "model.safetensors"))
    torch.testing.assert_close(trained["vision_encoder.blocks.0.attn.qkv.weight"], vision["blocks.0.attn.qkv.weight"])
    torch.testing.assert_close(trained["text_encoder.embeddings.word_embeddings.weight"],
                               bert["bert.embeddings.word_embeddings.weight"])
    assert no_network == []


def test_fetch_writes_every_part_a_config_names_from_the_hub_cache(fetched, tmp_path, no_network, capsys):
    """`tcl fetch-pretrained` end to end where the hub's cache holds the parts (the download itself needs the hub):
    DeiT-Ti's random weights under its timm name, and the tiny BERT and tokenizer under bert-base-uncased."""
    from huggingface_hub import constants
    from safetensors.torch import save_file

    cache = Path(constants.HF_HUB_CACHE)
    deit = timm.create_model("deit_tiny_patch16_224")
    save_file(deit.state_dict(), str(tmp_path / "model.safetensors"))
    hub_cache_entry(cache, "timm/deit_tiny_patch16_224.fb_in1k", {"model.safetensors": tmp_path / "model.safetensors"})
    hub_cache_entry(cache, "bert-base-uncased",
                    {path.name: path for folder in ("text", "tokenizer") for path in (fetched / folder).iterdir()})
    out = tmp_path / "parts"
    assert tcl_main(["fetch-pretrained", "--config", "pretrain_4m", "--out", str(out),
                     "model.vision_pretrained=deit_tiny_patch16_224.fb_in1k"]) == 0
    line = (out / "overrides.txt").read_text().split()
    assert line == [f"model.vision_pretrained={out / 'vision'}", f"model.text_pretrained={out / 'text'}",
                    f"data.tokenizer={out / 'tokenizer'}"]
    assert " ".join(line) in capsys.readouterr().out
    again = timm.create_model(f"local-dir:{out / 'vision'}", pretrained=True)
    assert torch.equal(again.state_dict()["blocks.0.attn.qkv.weight"], deit.state_dict()["blocks.0.attn.qkv.weight"])
    assert BertForMaskedLM.from_pretrained(str(out / "text")).config.hidden_size == 32
    assert len(BertTokenizer.from_pretrained(str(out / "tokenizer"))) > 0
    assert no_network == []
