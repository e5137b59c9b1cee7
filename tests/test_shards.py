"""``tcl make-shards``: real tar shards in img2dataset's layout from the embedded world and from ALBEF lists, read
back with tarfile; missing and corrupt images and empty captions are left out and counted; the bytes are
reproducible."""

import json
import tarfile
from pathlib import Path

import pytest
import torch

from tcl import cli
from tcl.config import load_config
from tcl.data.builders import pretrain_pairs

REPO = Path(__file__).resolve().parents[1]
# Shards and other sources carry no boxes: the terms that read them are off.
NO_REGIONS = ("loss.region_class_weight=0", "loss.grounding_weight=0")


def read_shards(folder: Path) -> dict[str, dict[str, bytes]]:
    """Every sample of the listed shards: key → {extension: bytes}, in shard order."""
    listing = json.loads((folder / "shards.json").read_text())
    samples: dict[str, dict[str, bytes]] = {}
    for name, count in listing["shards"].items():
        with tarfile.open(folder / name) as tar:
            members = tar.getmembers()
            for member in members:
                key, _, extension = member.name.partition(".")
                samples.setdefault(key, {})[extension] = tar.extractfile(member).read()
            assert len({m.name.partition(".")[0] for m in members}) == count
    assert len(samples) == listing["samples"]
    return samples


def test_the_embedded_world_as_shards(shapes_root, tmp_path, capsys):
    out = tmp_path / "shards"
    config = str(REPO / "configs/pretrain_tiny.yaml")
    assert cli.main(["make-shards", config, f"data.root={shapes_root}", "--out", str(out), "--samples-per-shard",
                     "50", "--quiet", "--keep-order"]) == 0
    table, image_root, _ = pretrain_pairs(load_config(config, [f"data.root={shapes_root}"]))
    listing = json.loads((out / "shards.json").read_text())
    assert list(listing["shards"]) == ["00000.tar", "00001.tar", "00002.tar"] and listing["skipped"] == {}
    assert list(listing["shards"].values()) == [50, 50, len(table) - 100]
    samples = read_shards(out)
    assert list(samples) == [f"{row:09d}" for row in range(len(table))]
    for key, sample in list(samples.items())[::17]:
        row = table[int(key)]
        assert set(sample) == {"jpg", "txt", "json"}
        assert sample["jpg"] == (image_root / row["image"]).read_bytes()  # the file's own bytes
        assert sample["txt"].decode() == row["captions"][0]
        assert json.loads(sample["json"]) == {"key": key, "image": row["image"], "captions": row["captions"]}
    assert f"wrote {len(table)} samples in 3 shards" in capsys.readouterr().out
    again = tmp_path / "again"
    cli.main(["make-shards", config, f"data.root={shapes_root}", "--out", str(again), "--samples-per-shard", "50",
              "--quiet", "--keep-order"])
    assert all((out / name).read_bytes() == (again / name).read_bytes() for name in listing["shards"])
    shuffled = tmp_path / "shuffled"  # the default: the same samples, each under its row's key, in a seeded order
    cli.main(["make-shards", config, f"data.root={shapes_root}", "--out", str(shuffled), "--samples-per-shard", "50",
              "--quiet"])
    mixed = read_shards(shuffled)
    assert list(mixed) != list(samples) and mixed == samples


def test_bad_images_and_captions_are_left_out_and_counted(shapes_copy, tmp_path):
    images = sorted((shapes_copy / "images" / "train2014").glob("*.jpg"))
    corrupt = images[1].read_bytes()
    images[1].write_bytes(corrupt[: len(corrupt) // 3])  # a truncated JPEG
    png = shapes_copy / "images" / "a.png"
    from PIL import Image

    Image.open(images[2]).save(png)
    entries = [{"image": str(images[0].relative_to(shapes_copy)), "caption": "a good one"},
               {"image": str(images[1].relative_to(shapes_copy)), "caption": "a corrupt image"},
               {"image": "images/train2014/nowhere.jpg", "caption": "a missing image"},
               {"image": str(images[3].relative_to(shapes_copy)), "caption": ""},
               {"image": "images/a.png", "caption": ["a png", "kept as png"]}]
    (shapes_copy / "pairs.json").write_text(json.dumps(entries))
    out = tmp_path / "shards"
    assert cli.main(["make-shards", str(REPO / "configs/pretrain_tiny.yaml"), f"data.root={shapes_copy}",
                     "data.pretrain_source=albef_json", "data.pretrain_files=[pairs.json]", *NO_REGIONS,
                     "--out", str(out), "--quiet", "--keep-order"]) == 0
    listing = json.loads((out / "shards.json").read_text())
    assert listing["skipped"] == {"corrupt image": 1, "missing image": 1}  # the empty caption: left out at indexing
    samples = read_shards(out)
    assert [set(sample) for sample in samples.values()] == [{"jpg", "txt", "json"}, {"png", "txt", "json"}]
    assert json.loads(samples["000000003"]["json"])["captions"] == ["a png", "kept as png"]


def make_shards(root: Path, out: Path) -> list[str]:
    assert cli.main(["make-shards", str(REPO / "configs/pretrain_tiny.yaml"), f"data.root={root}", "--out", str(out),
                     "--samples-per-shard", "50", "--quiet", "--keep-order"]) == 0
    return ["data.pretrain_source=shards", f'data.pretrain_files=["{out.name}/{{00000..00002}}.tar"]',
            *NO_REGIONS]


def test_shards_are_indexed_and_read_back_as_the_files_they_came_from(shapes_copy):
    from tcl.data.builders import build_pretrain_dataset
    from tcl.data.shards import expand_shards, read_member

    assert expand_shards("s/{08..11}.tar") == ["s/08.tar", "s/09.tar", "s/10.tar", "s/11.tar"]
    source = make_shards(shapes_copy, shapes_copy / "shards")
    config = str(REPO / "configs/pretrain_tiny.yaml")
    files, root, _ = pretrain_pairs(load_config(config, [f"data.root={shapes_copy}"]))
    shards, _, skipped = pretrain_pairs(load_config(config, [f"data.root={shapes_copy}", *source]))
    assert len(shards) == len(files) and not skipped
    for index in (0, 7, len(files) - 1):
        assert read_member(shards[index]["image"]) == (root / files[index]["image"]).read_bytes()
        assert shards[index]["captions"] == files[index]["captions"]
    dataset = build_pretrain_dataset(load_config(config, [f"data.root={shapes_copy}", *source]))
    sample = dataset[3]
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 64, 64) and sample["caption"]


def test_a_bad_member_is_a_counted_bad_sample(shapes_copy):
    import io

    from tcl.data.builders import build_pretrain_dataset

    out = shapes_copy / "bad"
    out.mkdir()
    image = (shapes_copy / "images/train2014").glob("*.jpg").__next__().read_bytes()
    with tarfile.open(out / "00000.tar", "w") as tar:
        for name, data in [("a.jpg", image), ("a.txt", b"a good sample"), ("b.jpg", image[:200]),
                           ("b.txt", b"a cut image"), ("c.jpg", image), ("d.txt", b"a caption without image")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    config = load_config(REPO / "configs/pretrain_tiny.yaml", [
        f"data.root={shapes_copy}", "data.pretrain_source=shards", "data.pretrain_files=[bad/00000.tar]",
        *NO_REGIONS])
    table, _, skipped = pretrain_pairs(config)
    assert len(table) == 2 and skipped == {"empty caption": 1, "missing image": 1}  # c: no caption, d: no image
    dataset = build_pretrain_dataset(config)
    assert dataset[0]["caption"] == "a good sample"
    assert dataset[1]["skipped"] == ["corrupt image"]  # the cut JPEG, found when read: replaced and counted


def test_pretraining_on_shards_takes_the_same_steps_as_on_the_files(shapes_copy, tmp_path):
    from safetensors.torch import load_file

    from tcl.engine.commands import pretrain as main

    source = make_shards(shapes_copy, shapes_copy / "shards")
    common = ["--config", str(REPO / "configs/pretrain_tiny.yaml"), f"data.root={shapes_copy}",
              *NO_REGIONS, "train.batch_size=8", "model.queue_size=32", "data.num_workers=0",
              "train.max_steps=3", "train.deterministic=true", "eval.retrieval_file=null"]
    assert main([*common, f"train.output_dir={tmp_path / 'files'}"]) == 0
    assert main([*common, *source, f"train.output_dir={tmp_path / 'shards'}"]) == 0
    files, shards = (load_file(str(tmp_path / run / "checkpoint-00000003/model.safetensors"))
                     for run in ("files", "shards"))
    assert all(torch.equal(files[key], shards[key]) for key in files)  # the same samples, views and steps


@pytest.mark.parametrize("workers_on_resume", [0, 1], ids=["same workers", "a worker process on resume"])
def test_a_run_on_shards_resumes_to_the_weights_of_an_uninterrupted_one(shapes_copy, tmp_path, workers_on_resume):
    from safetensors.torch import load_file

    from tcl.engine.commands import pretrain as main

    source = make_shards(shapes_copy, shapes_copy / "shards")
    common = ["--config", str(REPO / "configs/pretrain_tiny.yaml"), f"data.root={shapes_copy}", *source,
              "train.batch_size=8", "model.queue_size=32", "data.num_workers=0", "train.deterministic=true",
              "eval.retrieval_file=null", "train.log_every=1"]
    assert main([*common, "train.max_steps=5", f"train.output_dir={tmp_path / 'straight'}"]) == 0
    assert main([*common, "train.max_steps=2", f"train.output_dir={tmp_path / 'resumed'}"]) == 0
    assert main([*common, "train.max_steps=5", f"train.output_dir={tmp_path / 'resumed'}", "--resume", "latest",
                 f"data.num_workers={workers_on_resume}"]) == 0
    straight, resumed = (load_file(str(tmp_path / run / "checkpoint-00000005/model.safetensors"))
                         for run in ("straight", "resumed"))
    assert all(torch.allclose(straight[key], resumed[key], atol=1e-6) for key in straight)
