"""Typed configuration: shipped files load, overrides are typed, and bad values fail early with clear messages."""

from pathlib import Path

import pytest

from tcl.config import Config, load_config, save_config
from tcl.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["pretrain_tiny.yaml", "vqa_tiny.yaml", "pretrain_4m.yaml", "pretrain_4m_shards.yaml", "vqa.yaml"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_load(name):
    config = load_config(REPO / "configs" / name)
    assert isinstance(config, Config)


def test_paper_configs_name_the_real_models():
    pretrain = load_config(REPO / "configs/pretrain_4m.yaml")
    assert pretrain.model.text_pretrained == "bert-base-uncased"
    assert pretrain.model.vision_pretrained.startswith("deit_base_patch16_224")
    assert (pretrain.model.image_size, pretrain.model.queue_size, pretrain.train.batch_size) == (256, 65536, 64)
    vqa = load_config(REPO / "configs/vqa.yaml")
    assert (vqa.model.image_size, vqa.train.lr, vqa.eval.k_test, vqa.vqa.head) == (384, 2e-5, 128, "decoder")


def test_agreed_key_names_exist():
    config = load_config(None, ["data.root=/x", "data.on_bad_sample=error", "train.output_dir=/o",
                                "train.max_steps=3", "train.save_every=2", "train.batch_size=8",
                                "loss.objective=debiased_neg", "loss.tau_plus=0.05"])
    assert config.data.root == "/x" and config.data.on_bad_sample == "error"
    assert (config.train.max_steps, config.train.save_every, config.train.batch_size) == (3, 2, 8)
    assert (config.loss.objective, config.loss.tau_plus) == ("debiased_neg", 0.05)


def test_overrides_are_typed():
    config = load_config(None, ["train.lr=1e-3", "train.grad_clip=null", "data.vqa_train=[a, b]",
                                "data.hflip=false", "data.shapes.seed=7"])
    assert config.train.lr == 1e-3 and isinstance(config.train.lr, float)
    assert config.train.grad_clip is None
    assert config.data.vqa_train == ["a", "b"]
    assert config.data.hflip is False
    assert config.data.shapes.seed == 7


def _write(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = _write(tmp_path, "train:\n  batch_sise: 8\n")
    expected = r"bad\.yaml: unknown key 'train\.batch_sise'.*Did you mean 'train\.batch_size'"
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        load_config(_write(tmp_path, "trian:\n  lr: 1\n"))


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"bad\.yaml: train\.batch_size must be int, got 'eight'"):
        load_config(_write(tmp_path, "train:\n  batch_size: eight\n"))
    with pytest.raises(ConfigError, match="train.epochs must be int, got True"):
        load_config(None, ["train.epochs=true"])


def test_literal_choices(tmp_path):
    with pytest.raises(ConfigError, match="loss.objective = 'nce' is not one of infonce | debiased_neg | debiased_pos"):
        load_config(_write(tmp_path, "loss:\n  objective: nce\n"))


def test_invalid_yaml_has_line(tmp_path):
    with pytest.raises(ConfigError, match=r"bad\.yaml:3:1: invalid YAML"):
        load_config(_write(tmp_path, "train:\n  lr: [1, 2\n"))


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/no/such/config.yaml")


def test_queue_divisibility_with_processes():
    load_config(None, ["model.queue_size=1024", "train.batch_size=32"], world_size=2)
    with pytest.raises(ConfigError, match=r"model.queue_size = 1000 is not divisible by .* = 32 x 2 = 64"):
        load_config(None, ["model.queue_size=1000", "train.batch_size=32"], world_size=2)


def test_world_size_read_from_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="32 x 3 = 96"):
        load_config(None, ["model.queue_size=1024", "train.batch_size=32"])


@pytest.mark.parametrize("tau", [0.0, 1.0, -0.1])
def test_debiased_pos_needs_tau_plus_in_open_interval(tau):
    with pytest.raises(ConfigError, match=r"loss.tau_plus = .* must lie in \(0, 1\) for loss.objective = debiased_pos"):
        load_config(None, ["loss.objective=debiased_pos", f"loss.tau_plus={tau}"])


def test_debiased_neg_allows_tau_plus_zero():
    assert load_config(None, ["loss.objective=debiased_neg", "loss.tau_plus=0"]).loss.tau_plus == 0.0


@pytest.mark.parametrize("override, message", [
    ("model.image_size=60", "not a multiple of model.patch_size"),
    ("model.fusion_layer=4", "model.fusion_layer = 4 must lie in"),
    ("model.max_text_len=100", "exceeds model.max_position_embeddings"),
    ("model.hidden_size=65", "not divisible by model.num_attention_heads"),
    ("train.max_steps=0", "train.max_steps = 0 must be positive"),
])
def test_impossible_model_and_train_values(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(None, ["train.lr"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(None, ["train.lr.x=1"])


def test_saved_config_round_trips(tmp_path):
    config = load_config(REPO / "configs/pretrain_tiny.yaml", ["train.max_steps=5", "loss.objective=debiased_pos"])
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


def test_a_run_folder_written_before_an_option_was_removed_still_loads(tmp_path):
    """Run folders save every key; one that held a removed option at its old default loads, any other value is
    refused with what became of the option, and so is an override of it."""
    import yaml

    from tcl.config import RETIRED, save_config

    path = tmp_path / "config.yaml"
    save_config(load_config("pretrain_tiny"), path)
    saved = yaml.safe_load(path.read_text())
    for dotted, (default, _) in RETIRED.items():
        *sections, key = dotted.split(".")
        node = saved
        for section in sections:
            node = node[section]
        node[key] = default
    path.write_text(yaml.safe_dump(saved))
    assert load_config(path) == load_config("pretrain_tiny")
    saved["model"]["pos_embed_scale"] = 0.5
    path.write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match=r"'model\.pos_embed_scale' was removed after commit 6f86a42 \(the sine-cos"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"'loss\.align_uniform_weight' was removed"):
        load_config("pretrain_tiny", ["loss.align_uniform_weight=0.0"])
