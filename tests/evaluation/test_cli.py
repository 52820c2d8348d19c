"""Flag parsing of the serving benchmark: literal rounds, validation errors that name the flag."""

from __future__ import annotations

import math

import pytest

from evaluation.bench_cli import parse_args, parse_rounds
from evaluation.benchmark_serving import main


def test_rounds_literal() -> None:
    assert parse_rounds("[(100, 2), (50, 4.5)]") == ((100, 2.0), (50, 4.5))
    assert parse_rounds("(10, 1)") == ((10, 1.0),)
    assert parse_rounds("[(10, 'inf')]") == ((10, math.inf),)


@pytest.mark.parametrize("text", ["__import__('os').system('true')", "[(1,)]", "[]", "[(0, 1)]"])
def test_rounds_rejects_non_literals_and_bad_shapes(text: str) -> None:
    with pytest.raises(Exception, match="num_prompts|literal|expected"):
        parse_rounds(text)


def test_config_defaults_and_units() -> None:
    cfg = parse_args(
        [
            "--dataset",
            "d.jsonl",
            "--num-prompts",
            "10",
            "--request-rate",
            "2",
            "--attainment",
            "90",
            "--base-url",
            "http://127.0.0.1:9/",
        ]
    )
    assert cfg.rounds == ((10, 2.0),) and cfg.attainment == 0.9
    assert cfg.base_url == "http://127.0.0.1:9/" and cfg.ignore_eos and cfg.arrival == "poisson"
    cfg = parse_args(["--dataset", "d", "--port", "1234", "--no-ignore-eos"])
    assert cfg.base_url == "http://127.0.0.1:1234" and not cfg.ignore_eos
    assert cfg.rounds == ((1000, math.inf),)


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--dataset", "d", "--request-rate", "-1"], "--request-rate"),
        (["--dataset", "d", "--arrival", "weibull"], "--arrival"),
        (["--dataset", "d", "--backend", "tgi"], "--backend"),
        (
            ["--dataset", "d", "--num-prompts-req-rates", "os.system('x')"],
            "--num-prompts-req-rates",
        ),
        (
            ["--dataset", "d", "--num-prompts", "3", "--num-prompts-req-rates", "[(1, 1)]"],
            "--num-prompts",
        ),
        (["--dataset", "d", "--sweep"], "--sweep"),
        (["--dataset", "d", "--cv", "0"], "--cv"),
        (["--num-prompts", "3"], "--dataset"),
    ],
)
def test_bad_flags_name_the_flag(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err
