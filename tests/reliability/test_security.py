"""Security defaults: nothing from the network is eval'd/unpickled/unmarshalled (source scan),
no trust_remote_code, loopback bind by default, and bad model / placement paths give clear
errors instead of tracebacks."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from distllm.entrypoints import serve

SOURCE_ROOT = Path(__file__).resolve().parents[2] / "distllm"
FORBIDDEN = {  # pattern -> why
    r"(?<![\w.])eval\(": "eval of data",
    r"(?<![\w.])exec\(": "exec of data",
    r"pickle\.loads?\(": "unpickling",
    r"cloudpickle\.loads?\(": "unpickling",
    r"marshal\.loads?\(": "unmarshalling",
    r"yaml\.load\(": "unsafe YAML",
    r"trust_remote_code\s*=\s*True": "remote code",
    r"shell\s*=\s*True": "shell injection",
}

# (file, pattern) -> why it is safe there. The step channel unpickles only what comes from a
# peer that passed the channel's HMAC challenge (a random per-instance key the driver hands its
# workers through Ray, whose own RPC pickles as well); its Unix socket sits in a 0700
# directory. test_step_channel checks that a wrong key is refused before anything is read.
ALLOWED = {("worker/step_channel.py", r"pickle\.loads?\("): "authenticated driver <-> worker"}


def _sources() -> list[Path]:
    return sorted(p for p in SOURCE_ROOT.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("pattern", list(FORBIDDEN))
def test_no_unsafe_deserialization_in_the_package(pattern: str) -> None:
    hits = [f"{p.relative_to(SOURCE_ROOT)}:{n}" for p in _sources()
            if (p.relative_to(SOURCE_ROOT).as_posix(), pattern) not in ALLOWED
            for n, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(pattern, line) and not line.lstrip().startswith("#")]
    assert not hits, f"{FORBIDDEN[pattern]}: {hits}"


def test_torch_load_is_weights_only() -> None:
    for p in _sources():
        for n, line in enumerate(p.read_text().splitlines(), 1):
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{p}:{n}"


def test_serve_binds_loopback_by_default(tmp_path: Path) -> None:
    ns = serve.make_parser().parse_args(["--model", str(tmp_path)])
    assert ns.host == "127.0.0.1" and ns.api_key is None


def test_missing_model_is_a_clear_error(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                        ) -> None:
    assert serve.main(["--model", str(tmp_path / "nope"), "--port", "0"]) == 2
    assert "config.json" in caplog.text


@pytest.mark.parametrize("content", ["{not json", json.dumps({"bogus": 1}), "[1, 2]",
                                     json.dumps({"instances": "x"})])
def test_bad_placement_is_a_clear_error(tiny_model: Path, tmp_path: Path, content: str,
                                        caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "placement.json"
    path.write_text(content)
    assert serve.main(["--model", str(tiny_model), "--placement", str(path)]) == 2
    assert "placement" in caplog.text.lower()


def test_missing_placement_is_a_clear_error(tiny_model: Path, tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "missing.json"
    assert serve.main(["--model", str(tiny_model), "--placement", str(missing)]) == 2
    assert "not found" in caplog.text
