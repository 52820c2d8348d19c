"""The step channel (distllm.worker.step_channel) on its own: order, pipelining, a step that
raises, a reply that does not come, a worker process that dies, a client with the wrong key,
Unix and TCP sockets."""
from __future__ import annotations

import multiprocessing
import os
import time
from multiprocessing.connection import AuthenticationError

import pytest

from distllm.worker.step_channel import StepChannel, StepFailed, StepServer, WorkerLost

KEY = b"k" * 32


def _echo(step: object) -> object:
    if step == "raise":
        raise ValueError("bad step")
    if step == "slow":
        time.sleep(0.5)
    return ("did", step)


def _connect(server: StepServer, key: bytes = KEY) -> StepChannel:
    return StepChannel(server.family, server.address, key, "test worker")


@pytest.mark.parametrize("host", [None, "127.0.0.1"], ids=["unix", "tcp"])
def test_steps_come_back_in_order_with_several_in_flight(host: str | None) -> None:
    server = StepServer(_echo, KEY, host=host)
    assert server.family == ("AF_UNIX" if host is None else "AF_INET")
    channel = _connect(server)
    seqs = [channel.submit({"step": i}) for i in range(5)]
    assert seqs == list(range(5))
    # asked for out of order: earlier replies wait, buffered
    assert channel.result(3, 5.0) == ("did", {"step": 3})
    assert all(channel.done(s) for s in (0, 1, 2))
    assert [channel.result(s, 5.0) for s in (0, 1, 2)] == [("did", {"step": i}) for i in range(3)]
    assert channel.result(4, 5.0) == ("did", {"step": 4})
    assert not channel.expecting and server.num_steps == 5
    channel.close()


def test_a_failing_step_reports_its_error_and_the_worker_lives_on() -> None:
    server = StepServer(_echo, KEY)
    channel = _connect(server)
    bad, good = channel.submit("raise"), channel.submit("next")
    with pytest.raises(StepFailed, match="test worker: ValueError: bad step"):
        channel.result(bad, 5.0)
    assert channel.result(good, 5.0) == ("did", "next")
    channel.close()


def test_a_reply_that_does_not_come_in_time_fails_the_step() -> None:
    server = StepServer(_echo, KEY)
    channel = _connect(server)
    seq = channel.submit("slow")
    assert not channel.done(seq)
    with pytest.raises(StepFailed, match="no reply to a step within"):
        channel.result(seq, 0.05)
    channel.close()


def test_a_client_with_the_wrong_key_is_refused_before_any_step_runs() -> None:
    calls = []
    server = StepServer(lambda step: calls.append(step), KEY)
    with pytest.raises(AuthenticationError):
        _connect(server, key=b"x" * 32)
    time.sleep(0.1)
    assert calls == [] and server.num_steps == 0
    assert not os.path.exists(server.address)  # the socket (and its directory) are gone


def _serve_then_die(key: bytes, address_out: object) -> None:
    def execute(step: object) -> object:
        if step == "die":
            os._exit(1)
        return step

    server = StepServer(execute, key)
    address_out.put(server.address)  # type: ignore[attr-defined]
    time.sleep(30)  # until the "die" step (or the test's kill)


def test_a_worker_process_that_dies_fails_its_steps_with_worker_lost() -> None:
    ctx = multiprocessing.get_context("fork")
    address = ctx.Queue()
    proc = ctx.Process(target=_serve_then_die, args=(KEY, address), daemon=True)
    proc.start()
    try:
        channel = StepChannel("AF_UNIX", address.get(timeout=30), KEY, "worker 7")
        assert channel.result(channel.submit("alive"), 10.0) == "alive"
        dying, after = channel.submit("die"), channel.submit("after")
        deadline = time.monotonic() + 10
        while not channel.done(dying) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert channel.done(dying) and channel.done(after)
        for seq in (dying, after):
            with pytest.raises(WorkerLost, match="step channel to worker 7 closed"):
                channel.result(seq, 1.0)
        later = channel.submit("later")  # a broken channel fails new steps at once
        with pytest.raises(WorkerLost):
            channel.result(later, 1.0)
        proc.join(10)
        assert proc.exitcode == 1
    finally:
        proc.kill()
        proc.join(10)


def test_closing_the_channel_ends_the_worker_thread() -> None:
    server = StepServer(_echo, KEY)
    channel = _connect(server)
    channel.result(channel.submit(1), 5.0)
    channel.close()
    server._thread.join(5.0)
    assert not server._thread.is_alive()
    with pytest.raises(WorkerLost, match="was closed"):
        channel.result(channel.submit(2), 1.0)
