"""Stopping a run of many processes the way clusters and spot instances stop them.

A scheduler that takes a node away sends SIGTERM to that node's processes only, while the others go on. A flag kept
per process would send the signalled process into the checkpoint's collectives while its peers enter the next step's,
and the job would hang. So a signal only raises this process's flag (``local``), and the trainer folds that flag into
a reduction every optimizer step already does (its finiteness check): after it, every process knows (``agreed``) that
some process was asked to stop, at the same micro-batch, and all of them checkpoint and exit at the same step.

A later signal, from two seconds after the first on, ends the process at once (killed by that signal, as if no
handler were installed): the operator's second Ctrl-C. Repeats within those two seconds are the same request arriving
twice, as when a scheduler signals every process of a job (SLURM does) and the launcher forwards its own copy to its
workers; ending the process then would lose the checkpoint. Python runs a handler between bytecodes, so a process
blocked inside a collective acts on a signal when that collective returns: at the latest after the process group's
timeout. A checkpoint being written when the process ends stays under its temporary name; ``latest`` keeps naming the
previous one.

A peer that dies, or stops answering, ends the others' collectives with a backend error after the process group's
timeout (``train.process_group_timeout_s``); ``peer_failure`` recognises those errors.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Signals this soon after the first are the same request delivered twice (scheduler and launcher).
REPEAT_WINDOW_S = 2.0
# What gloo and NCCL say when a peer is gone or does not answer (they raise plain RuntimeErrors).
_PEER_FAILURE = re.compile(r"connection (reset|closed) by peer|pair closure|timed out waiting|"
                           r"collective operation timeout|communicator was aborted", re.IGNORECASE)


class StopRequest:
    """SIGTERM/SIGINT ask for a checkpoint and a clean exit at the next optimizer step that every process agrees on."""

    def __init__(self):
        self.local = False  # this process received a stop signal
        self.agreed = False  # some process did, and every process knows it (set by the trainer's reduction)
        self.first_signal: float | None = None
        self.previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        now = time.monotonic()
        if self.first_signal is None:
            self.local, self.first_signal = True, now  # before logging: a repeat may arrive while it writes
            logger.warning("received %s: saving a checkpoint and stopping (another %s from %g s on ends this process "
                           "at once)", name, name, REPEAT_WINDOW_S)
        elif now - self.first_signal >= REPEAT_WINDOW_S:
            logger.warning("received %s again: ending now; the last complete checkpoint stays the latest", name)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def agree(self, any_process_asked: bool) -> None:
        """Records the outcome of a reduction of every process's ``local`` flag."""
        self.agreed = self.agreed or any_process_asked

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def peer_failure(error: BaseException) -> bool:
    """Whether ``error`` is a collective that failed because another process died or stopped answering."""
    import torch.distributed

    return isinstance(error, getattr(torch.distributed, "DistError", ())) or (
        isinstance(error, RuntimeError) and bool(_PEER_FAILURE.search(str(error))))
