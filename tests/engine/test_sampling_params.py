"""SamplingParams validation names the offending field."""
from __future__ import annotations

import pytest

from distllm.sampling_params import SamplingParams, SamplingParamsError


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 2.5}, "max_tokens"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": 1.5}, "top_k"),
    ({"min_tokens": 5, "max_tokens": 4}, "min_tokens"),
    ({"seed": "x"}, "seed"),
    ({"stop": [""]}, "stop"),
    ({"stop_token_ids": [-1]}, "stop_token_ids"),
])
def test_invalid_values_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(SamplingParamsError) as info:
        SamplingParams(**kwargs)
    assert info.value.field == field
    assert field in str(info.value)
    assert isinstance(info.value, ValueError)


def test_stop_inputs_are_normalised_to_tuples() -> None:
    params = SamplingParams(stop="###", stop_token_ids=[5, 6])
    assert params.stop == ("###",) and params.stop_token_ids == (5, 6)
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b")


def test_greedy_detection() -> None:
    assert SamplingParams(temperature=0.0).is_greedy
    assert SamplingParams(temperature=0.7, top_k=1).is_greedy
    assert not SamplingParams(temperature=0.7).is_greedy


def test_from_request_ignores_unrelated_keys() -> None:
    params = SamplingParams.from_request(
        {"prompt": "hi", "stream": True, "max_tokens": 7, "stop": ["x"], "ignore_eos": True})
    assert params.max_tokens == 7 and params.stop == ("x",) and params.ignore_eos
    with pytest.raises(SamplingParamsError, match="temperature"):
        SamplingParams.from_request({"temperature": -1})
