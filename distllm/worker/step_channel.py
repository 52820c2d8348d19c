"""The step channel: the driver hands a worker its forward steps over a socket instead of one
Ray task per step.

A Ray actor call costs the driver ~0.8 ms of CPU and ~1.5 ms of round trip on a 2-core host, as
long as a decode step of a small model (evaluation/bench_step_rpc.py measures both side by
side). So each worker of an instance with pp = 1 opens a socket (a Unix socket when the driver
runs on its node, TCP otherwise; authenticated with a key the driver makes per instance), and a
thread of the worker runs the steps it receives, in order, answering each with its result:

    driver  StepChannel.submit(scheduler_output) -> seq     ... done(seq) / result(seq)
    worker  StepServer thread: recv -> execute -> send ("ok", result) | ("error", message)

Steps stay in submission order on each worker, as with Ray's one-thread "compute" group, so
async scheduling and the scheduler's assumptions do not change. KV migrations, set-up and
shutdown stay Ray calls. A worker whose process dies closes its socket: the driver reads EOF and
raises WorkerLost for its steps (never a hang); a step that raises on the worker comes back as
StepFailed with the worker's message, and the worker lives on.
"""
from __future__ import annotations

import logging
import os
import pickle
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

logger = logging.getLogger(__name__)

PICKLE_PROTOCOL = 5


class StepFailed(Exception):
    """A step raised on a worker, or its reply did not come in time; the worker may live on."""


class WorkerLost(Exception):
    """A worker of the step died: its process exited or its channel broke."""


def _no_delay(conn: Connection) -> None:
    """TCP: send small messages at once (two steps in flight would wait on Nagle's timer)."""
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    finally:
        sock.close()


class StepServer:
    """The worker's end: listens for the driver's one connection, then runs each step it
    receives with `execute` on its own thread and answers in order.

    Args:
        execute: runs one step (a SchedulerOutput), returns what the driver gets back.
        authkey: the connection's key (the driver proves it holds it, and vice versa).
        host: None: a Unix socket (the driver shares this node); else the TCP address to bind.
    """

    def __init__(self, execute: Callable[[Any], Any], authkey: bytes,
                 host: str | None = None, label: str = "") -> None:
        self._execute = execute
        self.label = label  # the instance, in the step trace (distllm.tracing)
        self._dir: str | None = None
        if host is None:
            self._dir = tempfile.mkdtemp(prefix="distllm-step-")
            self.family, address = "AF_UNIX", os.path.join(self._dir, "sock")
        else:
            self.family, address = "AF_INET", (host, 0)
        self._listener = Listener(address, self.family, authkey=authkey)
        self.address = self._listener.address
        self.num_steps = 0
        self._thread = threading.Thread(target=self._serve, name="distllm-step-channel",
                                        daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn = self._listener.accept()
        except Exception as e:  # noqa: BLE001 - a driver that failed to authenticate
            logger.warning("step channel: no driver connected (%s: %s)", type(e).__name__, e)
            return
        finally:
            self._listener.close()
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
        _no_delay(conn)
        from distllm.tracing import step_trace

        trace = step_trace("worker")
        with conn:
            while True:
                try:
                    payload = conn.recv_bytes()
                except (EOFError, OSError):  # the driver closed the channel
                    trace.flush()
                    return
                received = time.monotonic() if trace.enabled else 0.0
                try:
                    reply = pickle.dumps(("ok", self._execute(pickle.loads(payload))),
                                         protocol=PICKLE_PROTOCOL)
                except Exception as e:  # noqa: BLE001 - reported to the driver, the worker lives
                    logger.exception("step failed")
                    reply = pickle.dumps(("error", f"{type(e).__name__}: {e}"),
                                         protocol=PICKLE_PROTOCOL)
                if trace.enabled:
                    trace.event("step", self.label, self.num_steps, received, time.monotonic())
                self.num_steps += 1
                try:
                    conn.send_bytes(reply)
                except OSError:
                    return


class StepChannel:
    """The driver's end of one worker's channel: steps go out in order, replies come back in
    order and wait (buffered) until their step is asked for.

    Args:
        family, address: what the worker's StepServer listens on.
        authkey: the key the worker was given.
        name: the worker, for messages ("prefill-0 worker 1").
    """

    def __init__(self, family: str, address: Any, authkey: bytes, name: str) -> None:
        self.name = name
        self.conn = Client(address, family, authkey=authkey)
        _no_delay(self.conn)
        self._sent = 0
        self._received = 0
        self._replies: dict[int, tuple[str, Any]] = {}
        self.error: str | None = None  # why the channel broke, once it has

    @property
    def expecting(self) -> bool:
        """A reply is still to come (the socket is worth waiting on)."""
        return self.error is None and self._received < self._sent

    def submit(self, scheduler_output: Any) -> int:
        """Send a step; returns its sequence number (a broken channel fails it at result)."""
        seq = self._sent
        self._sent += 1
        if self.error is None:
            try:
                self.conn.send_bytes(pickle.dumps(scheduler_output, protocol=PICKLE_PROTOCOL))
            except OSError as e:
                self._broke(e)
        return seq

    def done(self, seq: int) -> bool:
        """Whether step `seq` has its reply (or never will: the channel broke). Reads every
        reply already on the socket without blocking."""
        while self.expecting and self._poll(0.0):
            self._read_one()
        return seq in self._replies or self.error is not None

    def result(self, seq: int, timeout_s: float) -> Any:
        """Step `seq`'s result. Raises StepFailed (the step raised on the worker, or no reply
        within `timeout_s`) or WorkerLost (the worker's process is gone)."""
        deadline = time.monotonic() + timeout_s
        while seq not in self._replies:
            if self.error is not None:
                raise WorkerLost(self.error)
            if not self._poll(max(deadline - time.monotonic(), 0.0)):
                raise StepFailed(f"{self.name}: no reply to a step within {timeout_s:.0f} s")
            self._read_one()
        status, value = self._replies.pop(seq)
        if status != "ok":
            raise StepFailed(f"{self.name}: {value}")
        return value

    def close(self) -> None:
        if self.error is None:
            self.error = f"the step channel to {self.name} was closed"
        self.conn.close()

    def _poll(self, timeout_s: float) -> bool:
        try:
            return self.conn.poll(timeout_s)
        except (OSError, ValueError) as e:  # ValueError: closed
            self._broke(e)
            return True

    def _read_one(self) -> None:
        try:
            reply = pickle.loads(self.conn.recv_bytes())
        except (EOFError, OSError, ValueError) as e:
            self._broke(e)
            return
        self._replies[self._received] = reply
        self._received += 1

    def _broke(self, e: BaseException) -> None:
        if self.error is None:
            self.error = (f"the step channel to {self.name} closed "
                          f"({type(e).__name__}{': ' + str(e) if str(e) else ''}): its process "
                          "is gone")
