"""evaluation/step_trace_report.py on a hand-made trace: decode steps matched to the driver's
submissions, the KV-landing and other-instance contrasts, idle time between decode steps."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation import step_trace_report as rep


def _write(directory: Path, name: str, events: list) -> None:
    directory.mkdir(exist_ok=True)
    (directory / name).write_text("".join(json.dumps(e) + "\n" for e in events))


def _trace(directory: Path) -> None:
    """decode-0: 2 ms batch-1 steps back to back; 4 ms while a KV receive lands; 3 ms while
    prefill-0 steps; one 5 ms wait for a step with the batch running."""
    driver, worker_d, worker_p = [], [], []
    t, seq = 10.0, 0
    for i in range(30):
        kind = ("kv" if i % 3 == 1 else "other" if i % 3 == 2 else "alone") if i < 24 else "alone"
        ms = {"alone": 2.0, "kv": 4.0, "other": 3.0}[kind]
        driver.append([t - 0.001, "submit", "decode-0", seq, 0, 1])
        worker_d.append([t + ms / 1e3, "step", "decode-0", seq, t, t + ms / 1e3])
        if kind == "kv":
            worker_d.append([t + 0.0015, "kv", "decode-0", f"r{i}", t + 0.0005])
        if kind == "other":
            worker_p.append([t + 0.002, "step", "prefill-0", len(worker_p), t + 0.0002,
                             t + 0.002])
            driver.append([t - 0.002, "submit", "prefill-0", len(worker_p) - 1, 1, 0])
        t += ms / 1e3 + (0.005 if i == 26 else 0.0)
        seq += 1
    driver += [[0.9, "route", "r1", "prefill-0", [0]], [0.95, "route", "r2", "prefill-0", [1]],
               [1.0, "mig_start", "r1", "prefill-0", "decode-0"], [1.008, "mig_end", "r1"],
               [2.0, "mig_start", "r2", "prefill-0", "decode-0"]]  # r2 never ended: left out
    _write(directory, "driver-1.jsonl", driver)
    _write(directory, "worker-2.jsonl", worker_d)
    _write(directory, "worker-3.jsonl", worker_p)


def test_report_contrasts_and_idle_time(tmp_path: Path) -> None:
    _trace(tmp_path)
    r = rep.analyze(rep.load(str(tmp_path)))
    d = r["instances"]["decode-0"]
    assert d["steps"] == 30 and d["kv_receives"] == 8
    assert d["kv_landing_ratio"] == pytest.approx(2.0)
    assert d["other_stepping_ratio"] == pytest.approx(1.5)
    assert d["idle_gaps_over_1ms"] == 1
    assert d["idle_between_decode_steps_s"] == pytest.approx(0.005, abs=1e-6)
    cells = d["decode_ms_by_batch"]["1"]
    assert cells["alone"]["n"] == 14 and cells["alone"]["p50_ms"] == pytest.approx(2.0)
    assert cells["kv"]["p50_ms"] == pytest.approx(4.0)
    assert r["migrations"]["n"] == 1 and r["migrations"]["p50_ms"] == pytest.approx(8.0)
    assert r["instances"]["prefill-0"]["decode_ms_by_batch"] == {}  # prefill steps only
    text = rep.format_report(r)
    assert "KV landing 2.00x" in text and "another instance stepping 1.50x" in text
    assert r["instances"]["prefill-0"]["routed"] == 2 and d["routed"] == 0
    assert d["speed"]["steps"] == 30 - 8  # the steps a KV receive overlapped left out
    assert "2 requests routed here" in text


def test_cli_writes_json_and_names_a_bad_directory(tmp_path: Path, capsys) -> None:
    _trace(tmp_path / "t")
    assert rep.main([str(tmp_path / "t"), "--json", str(tmp_path / "r.json")]) == 0
    assert "decode-0: 30 steps" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["instances"]["decode-0"]["steps"] == 30
    with pytest.raises(SystemExit):
        rep.main([str(tmp_path / "missing")])
    assert "trace_dir" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        rep.main([str(tmp_path / "empty")])
    assert "no worker step events" in capsys.readouterr().err


def _turns(directory: Path) -> None:
    """Two instances stepping single requests side by side for 2 s; in alternate 100 ms spells
    one runs its 2 ms steps at half speed while the other runs at full speed."""
    driver, workers = [], {"a": [], "b": []}
    for name, slow_first in (("a", True), ("b", False)):
        t, seq = 1.0, 0
        while t < 3.0:
            slow = (int((t - 1.0) / 0.1) % 2 == 0) == slow_first
            ms = 4.0 if slow else 2.0
            driver.append([t - 0.0005, "submit", name, seq, 0, 1])
            workers[name].append([t + ms / 1e3, "step", name, seq, t, t + ms / 1e3])
            t += ms / 1e3 + 0.0001
            seq += 1
    _write(directory, "driver-1.jsonl", driver)
    _write(directory, "worker-2.jsonl", workers["a"])
    _write(directory, "worker-3.jsonl", workers["b"])


def test_speed_spells_and_instances_taking_turns(tmp_path: Path) -> None:
    _turns(tmp_path)
    r = rep.analyze(rep.load(str(tmp_path)))
    sp = r["instances"]["a"]["speed"]
    assert sp["steps"] > 600
    # durations are 2 or 4 ms, about a third of the steps slow: log-sd ~ ln 2 x 0.47
    assert 0.25 < sp["log_sd"] < 0.4
    acf = sp["autocorr"]
    assert acf["0-5 ms"] > 0.7 and acf["5-20 ms"] > 0.5  # mostly inside one 100 ms spell
    assert acf["50-150 ms"] < -0.3  # mostly in the next spell, of the other speed
    assert r["speed_cross_corr"]["a/b"] < -0.8  # one is slow while the other is fast
    text = rep.format_report(r)
    assert "speed a/b: correlation of steps starting within 5 ms -0." in text
    assert "autocorrelation 0-5 ms +0." in text
