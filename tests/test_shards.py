"""``tcl make-shards``: real tar shards in img2dataset's layout from the embedded world and from ALBEF lists, read
back with tarfile; missing and corrupt images and empty captions are left out and counted; the bytes are
reproducible."""

import json
import tarfile
from pathlib import Path

from tcl import cli
from tcl.config import load_config
from tcl.data.builders import pretrain_pairs

REPO = Path(__file__).resolve().parents[1]


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
                     "50", "--quiet"]) == 0
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
              "--quiet"])
    assert all((out / name).read_bytes() == (again / name).read_bytes() for name in listing["shards"])


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
                     "data.pretrain_source=albef_json", "data.pretrain_files=[pairs.json]", "loss.region_class_weight=0",
                     "--out", str(out),
                     "--quiet"]) == 0
    listing = json.loads((out / "shards.json").read_text())
    assert listing["skipped"] == {"corrupt image": 1, "missing image": 1}  # the empty caption: left out at indexing
    samples = read_shards(out)
    assert [set(sample) for sample in samples.values()] == [{"jpg", "txt", "json"}, {"png", "txt", "json"}]
    assert json.loads(samples["000000003"]["json"])["captions"] == ["a png", "kept as png"]
