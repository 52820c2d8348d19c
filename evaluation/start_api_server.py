"""Start one serving backend's API server for the benchmark, wait until it is healthy, and stop it
cleanly on Ctrl-C (SIGINT/SIGTERM are forwarded; the server gets 15 s to exit).

    python -m evaluation.start_api_server --backend distllm --model /models/opt-13b \
        [--placement p.json] [--port 8400] [-- extra server flags]

Per-model parallelism presets are DistServe's evaluation presets for OPT-125M..175B (matched on
the model name); a placement file overrides them. vLLM and DeepSpeed-MII are started through their
own servers when installed. The exact command is printed before it runs.
"""
from __future__ import annotations

import argparse
import importlib.util
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BACKENDS = ("distllm", "vllm", "deepspeed")
DEFAULT_PORTS = {"distllm": 8400, "vllm": 8100, "deepspeed": 8200}
PACKAGES = {"vllm": "vllm", "deepspeed": "mii"}  # backend -> module that must be importable
PIP_NAMES = {"vllm": "vllm", "mii": "deepspeed-mii"}


@dataclass(frozen=True)
class ModelPreset:
    """DistServe's evaluation parallelism for one model."""

    colocated_tp: int  # vLLM / DeepSpeed-MII tensor parallelism
    prefill: tuple[int, int]  # (tp, pp) of the prefill instance
    decode: tuple[int, int]  # (tp, pp) of the decode instance


# model name (matched on the last path component) -> preset
PRESETS: dict[str, ModelPreset] = {
    "opt-125m": ModelPreset(1, (1, 1), (1, 1)),
    "opt-1.3b": ModelPreset(1, (1, 1), (1, 1)),
    "opt-6.7b": ModelPreset(1, (1, 1), (1, 1)),
    "opt-13b": ModelPreset(1, (2, 1), (1, 1)),
    "opt-66b": ModelPreset(4, (4, 1), (2, 2)),
    "opt-175b": ModelPreset(8, (3, 3), (4, 3)),
}


def find_preset(model: str) -> ModelPreset | None:
    return PRESETS.get(Path(model.rstrip("/")).name.lower())


def preset_placement(model: str, preset: ModelPreset, out_dir: Path) -> Path:
    """Write the preset as a disaggregated placement file (the `distllm serve` input)."""
    from distllm.placement import Placement, StagePlacement, save_placement

    (ptp, ppp), (dtp, dpp) = preset.prefill, preset.decode
    placement = Placement(model=model, mode="disaggregated",
                          prefill=StagePlacement(tp=ptp, pp=ppp),
                          decode=StagePlacement(tp=dtp, pp=dpp),
                          gpus_per_node=max(8, ptp * ppp + dtp * dpp))
    path = out_dir / f"placement-{Path(model.rstrip('/')).name}.json"
    save_placement(placement, path)
    return path


def distllm_command(ns: argparse.Namespace, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "distllm", "serve", "--model", ns.model,
           "--host", ns.host, "--port", str(ns.port)]
    preset = find_preset(ns.model)
    placement = ns.placement
    if placement is None and preset is not None and ns.use_preset:
        placement = str(preset_placement(ns.model, preset, Path(tempfile.gettempdir())))
    if placement is not None:
        cmd += ["--placement", placement]
    return cmd + extra


def vllm_command(ns: argparse.Namespace, extra: list[str]) -> list[str]:
    preset = find_preset(ns.model)
    tp = preset.colocated_tp if preset is not None and ns.use_preset else 1
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", ns.model,
            "--host", ns.host, "--port", str(ns.port), "--tensor-parallel-size", str(tp),
            "--block-size", "16", "--swap-space", "16", "--seed", "0", *extra]


def deepspeed_command(ns: argparse.Namespace, extra: list[str]) -> list[str]:
    preset = find_preset(ns.model)
    tp = preset.colocated_tp if preset is not None and ns.use_preset else 1
    script = (
        "import signal, mii\n"
        f"mii.serve({ns.model!r}, deployment_name={ns.deployment!r}, tensor_parallel={tp}, "
        f"enable_restful_api=True, restful_api_port={ns.port})\n"
        "try:\n    signal.pause()\n"
        f"finally:\n    mii.client({ns.deployment!r}).terminate_server()\n")
    return [sys.executable, "-c", script, *extra]


COMMANDS = {"distllm": distllm_command, "vllm": vllm_command, "deepspeed": deepspeed_command}


def is_healthy(ns: argparse.Namespace) -> bool:
    """distllm / vLLM: GET /health answers 200; DeepSpeed-MII: its REST port accepts."""
    url = f"http://{ns.host}:{ns.port}/health"
    if ns.backend == "deepspeed":
        url = f"http://{ns.host}:{ns.port}/"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except urllib.error.HTTPError:
        return ns.backend == "deepspeed"  # any HTTP answer means MII's server is up
    except OSError:
        return False


def wait_healthy(proc: subprocess.Popen, ns: argparse.Namespace) -> bool:
    deadline = time.monotonic() + ns.startup_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if is_healthy(ns):
            return True
        time.sleep(0.2)
    return False


def stop(proc: subprocess.Popen, grace_s: float = 15.0) -> int:
    """SIGINT, then SIGTERM, then SIGKILL; returns the server's exit code."""
    for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        proc.send_signal(sig)
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=BACKENDS, default="distllm")
    p.add_argument("--model", required=True, help="model directory or name")
    p.add_argument("--placement", default=None, help="placement JSON (overrides the preset)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default: 8400/8100/8200 by backend")
    p.add_argument("--no-preset", dest="use_preset", action="store_false",
                   help="ignore the model's DistServe preset (run tp=pp=1)")
    p.add_argument("--deployment", default="distllm-bench", help="DeepSpeed-MII deployment")
    p.add_argument("--startup-timeout-s", type=float, default=1800.0)
    p.add_argument("--dry-run", action="store_true", help="print the command, do not run it")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    ns = make_parser().parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    ns.port = ns.port or DEFAULT_PORTS[ns.backend]
    cmd = COMMANDS[ns.backend](ns, extra)
    print(shlex.join(cmd), flush=True)
    if ns.dry_run:
        return 0
    module = PACKAGES.get(ns.backend)
    if module is not None and importlib.util.find_spec(module) is None:
        print(f"start_api_server: backend {ns.backend} needs the '{PIP_NAMES[module]}' package "
              f"(pip install {PIP_NAMES[module]})", file=sys.stderr)
        return 2
    return run(cmd, ns)


def run(cmd: list[str], ns: argparse.Namespace) -> int:
    # NOTE: set SIGINT too: a shell starting us in the background leaves it ignored.
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        if not wait_healthy(proc, ns):
            print(f"start_api_server: the {ns.backend} server did not become healthy",
                  file=sys.stderr)
            stop(proc)
            return 1
        print(f"ready: http://{ns.host}:{ns.port} (Ctrl-C stops the server)", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        code = stop(proc)
        print(f"stopped (server exit code {code})", flush=True)
        return 0 if code in (0, -signal.SIGINT) else code


if __name__ == "__main__":
    sys.exit(main())
