"""Streamed shards (``data.pretrain_source: webdataset``): real tar shards written by ``tcl make-shards`` read as
streams (local files and ``pipe:`` commands), dealt to processes and workers, shuffled, resumed exactly, re-dealt
to another number of workers without losing or repeating a sample; bad members and unreadable shards counted."""

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch

from tcl import cli
from tcl.config import load_config
from tcl.data.builders import build_pretrain_loader, build_tokenizer
from tcl.data.streaming import ShardSequence, StreamState, WorkerStream, initial_states, redeal
from tcl.errors import DataError, TclError

REPO = Path(__file__).resolve().parents[1]
# Shards and other sources carry no boxes: the terms that read them are off.
NO_REGIONS = ("loss.region_class_weight=0", "loss.grounding_weight=0")
TINY = str(REPO / "configs/pretrain_tiny.yaml")
PER_SHARD = 25


@pytest.fixture(scope="module")
def shards(shapes_root, tmp_path_factory) -> Path:
    """The embedded world's 120 training pairs as 5 shards of 25, 25, 25, 25 and 20 samples."""
    out = tmp_path_factory.mktemp("stream") / "shards"
    assert cli.main(["make-shards", TINY, f"data.root={shapes_root}", "--out", str(out), "--samples-per-shard",
                     str(PER_SHARD), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def tokenizer(shapes_root):
    return build_tokenizer(load_config(TINY, [f"data.root={shapes_root}"]))


def stream_config(root: Path, *extra: str):
    return load_config(TINY, [f"data.root={root}", "data.pretrain_source=webdataset",
                              'data.pretrain_files=["shards/{00000..00004}.tar"]', *NO_REGIONS,
                              "data.num_workers=0", "train.batch_size=8", "data.shuffle_buffer=10", *extra])


def sequence_of(shards: Path) -> ShardSequence:
    names = tuple(str(shards / f"{n:05d}.tar") for n in range(5))
    return ShardSequence(names, (5,), None, seed=7)


def take(stream_iter, count: int) -> list[tuple[int, int]]:
    return [(position, ordinal) for position, ordinal, _, _ in (next(stream_iter) for _ in range(count))]


def test_each_pass_reads_every_shard_once_and_weights_draw_sources_in_proportion(shards):
    sequence = sequence_of(shards)
    for passes in range(3):
        assert sorted(sequence.shard(passes * 5 + i) for i in range(5)) == sorted(sequence.shards)
    assert [sequence.shard(i) for i in range(5)] != [sequence.shard(5 + i) for i in range(5)]  # reshuffled per pass
    weighted = ShardSequence(("a0", "a1", "b0"), (2, 1), (3.0, 1.0), seed=1)
    drawn = Counter(weighted.shard(g)[0] for g in range(4000))
    assert drawn["a"] / 4000 == pytest.approx(0.75, abs=0.03)
    assert [weighted.shard(g) for g in range(50)] == [weighted.shard(g) for g in range(50)]  # deterministic


def test_workers_of_processes_share_out_the_pass(shards):
    """Two processes of two workers: each sample of a pass goes to exactly one worker of one process."""
    sequence, seen = sequence_of(shards), Counter()
    for rank in range(2):
        for state in initial_states(2):
            stream = iter(WorkerStream(sequence, state, rank, 2, 4, "skip", 0))
            items = take(stream, 60)
            seen.update(item for item in items if item[0] < 5)
    assert all(count == 1 for count in seen.values())
    assert len(seen) == 120  # 4 workers x 60 draws cover the first pass (1 shard each, and the fifth)


def test_a_stream_resumed_from_its_state_continues_exactly(shards):
    sequence = sequence_of(shards)
    straight = iter(WorkerStream(sequence, initial_states(1)[0], 0, 1, 10, "skip", 0))
    expected = take(straight, 90)
    first = WorkerStream(sequence, initial_states(1)[0], 0, 1, 10, "skip", 0)
    head = take(iter(first), 37)
    saved = StreamState.from_json(first.state.to_json())  # as a checkpoint holds it
    assert len(saved.buffer) == 9 and saved.pieces  # a buffer and a partly read shard to carry over
    tail = take(iter(WorkerStream(sequence, saved, 0, 1, 10, "skip", 0)), 53)
    assert head + tail == expected


def test_another_number_of_workers_gets_every_unread_sample_once(shards):
    """Three workers stop at uneven points; their unread samples, dealt over two new workers, complete the pass
    with no sample twice."""
    sequence = sequence_of(shards)
    states = initial_states(3)
    streams = [iter(WorkerStream(sequence, state, 0, 1, 6, "skip", 0)) for state in states]
    seen = Counter()
    for stream, count in zip(streams, (17, 30, 8)):
        seen.update(take(stream, count))
    carried = [StreamState.from_json(state.to_json()) for state in states]
    new = redeal(carried, 2, rank=0, world=1)
    # worker 1 began local index 4 (its second shard), so worker 0's turn at 3 is dealt as a whole piece
    assert sum(len(s.buffer) for s in new) == 15 and [s.next for s in new] == [5, 6]
    assert [3, 0, None] in new[0].pieces + new[1].pieces
    fresh = [iter(WorkerStream(sequence, state, 0, 1, 6, "skip", 0)) for state in new]
    for _ in range(60):
        for stream in fresh:
            seen.update(take(stream, 1))
    assert max(seen.values()) == 1
    assert sum(1 for position, _ in seen if position < 5) == 120


def test_bad_members_and_an_unreadable_shard_are_counted(shards, tokenizer, tmp_path, caplog):
    image = next(iter(tarfile.open(shards / "00000.tar"))).name
    good = tarfile.open(shards / "00000.tar").extractfile(image).read()
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        for name, data in [("a.jpg", good), ("a.txt", b"a good sample"), ("b.jpg", good[:300]),
                           ("b.txt", b"a cut image"), ("c.jpg", good), ("d.txt", b"a caption without image")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    cut = tmp_path / "cut.tar"
    cut.write_bytes((shards / "00001.tar").read_bytes()[:5000])  # a download cut short
    config = stream_config(tmp_path, f'data.pretrain_files=["{bad}", "{cut}"]', "data.epoch_samples=8",
                           "train.batch_size=2", "data.shuffle_buffer=1")
    loader = build_pretrain_loader(config, tokenizer, 0, 1)
    batches = iter(loader)
    loader.set_epoch(0)
    skipped = Counter()
    captions = []
    for batch in batches:
        skipped.update(batch["skipped"])
        captions += batch["captions"]
        if len(captions) >= 4:
            break
    assert "a good sample" in captions
    assert skipped["corrupt image"] >= 1 and skipped["empty caption"] >= 1 and skipped["missing image"] >= 1
    assert skipped["unreadable shard"] >= 1
    assert "skipping the rest of shard" in caplog.text and str(cut) in caplog.text


def test_pipe_commands_stream_the_same_samples(shards):
    local = ShardSequence((str(shards / "00002.tar"),), (1,))
    piped = ShardSequence((f"pipe:cat {shards / '00002.tar'}",), (1,))
    read = [list(WorkerStream(seq, initial_states(1)[0], 0, 1, 1, "skip", 0).__iter__().__next__()[2:3])
            for seq in (local, piped)]
    assert read[0][0].rsplit("/", 1)[1] == read[1][0].rsplit("/", 1)[1]
    failing = ShardSequence(("pipe:exit 3",), (1,))
    with pytest.raises(DataError, match="shards in a row gave no sample"):
        next(iter(WorkerStream(failing, initial_states(1)[0], 0, 1, 1, "skip", 0)))


def test_the_epoch_is_the_listed_count_or_must_be_given(shards):
    root = shards.parent
    loader = build_pretrain_loader(stream_config(root), None, 0, 2)
    assert loader.epoch_samples == 120 and loader.sampler.batches_per_epoch() == 120 // (8 * 2)
    piped = stream_config(root, f'data.pretrain_files=["pipe:cat {shards}/{{00000..00004}}.tar"]')
    with pytest.raises(DataError, match="set data.epoch_samples"):
        build_pretrain_loader(piped, None, 0, 1)
    with pytest.raises(DataError, match="shard not found"):
        build_pretrain_loader(stream_config(root, 'data.pretrain_files=["shards/{00000..00009}.tar"]'), None, 0, 1)


def test_another_number_of_processes_is_refused(shards):
    root = shards.parent
    loader = build_pretrain_loader(stream_config(root), None, 1, 2)
    saved = build_pretrain_loader(stream_config(root), None, 0, 4).state_dict()
    with pytest.raises(TclError, match="--num_processes 4"):
        loader.load_state_dict(saved, "checkpoint-00000002")


def run_keys(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "sample_keys/rank0.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("workers", [(2, 2), (2, 1)], ids=["same workers", "one worker on resume"])
def test_pretraining_resumes_on_the_stream(shards, shapes_root, tmp_path, workers):
    """Two loader workers, interrupted after 3 steps of epochs of 8: resumed with the same workers every step's
    samples are the uninterrupted run's, across the epoch's end too; with one worker, the rest of the epoch holds
    samples not seen before in it (64 different ones in its 8 steps)."""
    from tcl.engine.commands import pretrain as main

    root = shards.parent
    common = ["--config", TINY, f"data.root={root}", f"data.tokenizer={shapes_root / 'tokenizer'}",
              "data.pretrain_source=webdataset",
              'data.pretrain_files=["shards/{00000..00004}.tar"]', *NO_REGIONS, "train.epochs=2",
              "train.batch_size=8", "model.queue_size=32", "eval.retrieval_file=null", "train.log_sample_keys=true",
              "data.shuffle_buffer=10", "data.epoch_samples=64", "train.deterministic=true"]
    before, after = workers
    assert main([*common, f"data.num_workers={before}", f"train.output_dir={tmp_path / 'straight'}"]) == 0
    assert main([*common, f"data.num_workers={before}", "train.max_steps=3",
                 f"train.output_dir={tmp_path / 'resumed'}"]) == 0
    assert main([*common, f"data.num_workers={after}", "--resume", "latest",
                 f"train.output_dir={tmp_path / 'resumed'}"]) == 0
    straight, resumed = run_keys(tmp_path / "straight"), run_keys(tmp_path / "resumed")
    assert [line["step"] for line in resumed] == list(range(1, 17))
    if before == after:
        assert resumed == straight
        return
    assert resumed[:3] == straight[:3]
    first_epoch = [key for line in resumed[:8] for key in line["keys"]]
    assert len(set(first_epoch)) == len(first_epoch) == 64


def test_a_stream_state_fits_in_json():
    state = redeal(initial_states(2), 3, rank=1, world=2)[2]
    assert StreamState.from_json(state.to_json()) == state


def test_an_indexed_file_joins_the_stream_as_a_source(shards, shapes_root, tokenizer):
    """The world's COCO captions file beside the shards of the same pairs: one pass reads each of its rows and each
    shard sample once; the rows come with their image file's bytes and captions."""
    from tcl.data.builders import pretrain_pairs

    coco = "annotations/captions_train2014.json"
    config = stream_config(shapes_root, f'data.pretrain_files=["{shards}/{{00000..00004}}.tar", "{coco}"]')
    loader = build_pretrain_loader(config, tokenizer, 0, 1)
    assert loader.epoch_samples == 240
    dataset = loader.dataset
    assert dataset.sequence.source_sizes == (5, 1)  # five shards, one chunk of rows
    stream = iter(WorkerStream(dataset.sequence, initial_states(1)[0], 0, 1, 10, "skip", 0, dataset.reader))
    items = [next(stream) for _ in range(260)]
    first_pass = Counter((position, ordinal) for position, ordinal, _, _ in items if position < 6)
    assert len(first_pass) == 240 and max(first_pass.values()) == 1
    table, root, _ = pretrain_pairs(load_config(TINY, [f"data.root={shapes_root}"]))
    rows = {key: members for _, _, key, members in items if "#" in key}
    key, members = next(iter(rows.items()))
    row = table[int(key.rsplit("#", 1)[1])]
    assert members["jpg"] == (root / row["image"]).read_bytes()
    assert json.loads(members["json"])["captions"] == row["captions"]
    batch = next(iter(loader))
    assert batch["image"].shape == (8, 3, 64, 64) and batch["image"].dtype == torch.uint8
