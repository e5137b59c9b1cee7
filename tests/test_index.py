"""The Arrow index cache: one process builds while the others wait (and say so), progress on long builds."""

import logging
import threading
from collections import Counter

import datasets
from filelock import FileLock

from tcl.data import index

FEATURES = datasets.Features({"image": datasets.Value("string")})


def rows(count):
    def build(skipped: Counter):
        skipped["missing"] += 1
        return ({"image": f"{i}.jpg"} for i in range(count))
    return build


def test_a_process_waiting_for_another_build_says_so_and_then_reads_it(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(index, "WAIT_MESSAGE_S", 0.05)
    caplog.set_level(logging.INFO, logger="tcl.data.index")
    lock = FileLock(str(tmp_path / "pairs-k.lock"))
    lock.acquire()  # another process is building
    found = {}
    waiter = threading.Thread(target=lambda: found.update(zip(("table", "skipped"), index.cached_index(
        "pairs", "k", FEATURES, rows(5), tmp_path))))
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive() and "waiting" in caplog.text and "for another process building the pairs index" in \
        caplog.text
    lock.release()
    waiter.join(10)
    assert len(found["table"]) == 5 and found["skipped"] == Counter(missing=1)


def test_a_long_build_reports_its_rows(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(index, "PROGRESS_ROWS", 10)
    caplog.set_level(logging.INFO, logger="tcl.data.index")
    table, _ = index.cached_index("pairs", "long", FEATURES, rows(25), tmp_path)
    assert len(table) == 25
    assert "pairs index: 10 rows so far" in caplog.text and "pairs index: 25 rows" in caplog.text
