"""The cascade's pure verifiers, on concrete answers."""

import re

import pytest

from shoal.router import verify as V


@pytest.mark.parametrize(
    ("answer", "checked", "wrong"),
    [
        ("3 x 60 = <<3*60=180>>180 meters.\n180 x 3 = <<180*3=540>>540\n#### 540", 2, 0),
        ("so 6 * 3 = 18 and 18 + 2 = 21 in all", 2, 1),
        ("<<2*1*3=6>>6 liters/day * 3 days = <<6*3=18>>18", 2, 0),
        ("1,200 / 4 = 300 dollars", 1, 0),
        ("<<20/100*500=100>>100 and then <<500-100=300>>300", 2, 1),
        ("no arithmetic here, just 42", 0, 0),
        ("<<import os=1>>", 0, 0),
    ],
)
def test_arithmetic_checks_count_written_calculations_and_the_wrong_ones(answer, checked, wrong):
    assert V.arithmetic_checks(answer) == (checked, wrong)


def test_verify_arithmetic_rejects_an_answer_with_a_wrong_step():
    assert V.verify_arithmetic("4 + 4 = 8\n#### 8") == V.OK
    assert V.verify_arithmetic("4 + 4 = 9\n#### 9") == V.Verdict(False, V.ARITHMETIC, "1 of 1 calculations are wrong")


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "minLength": 1}, "age": {"type": "integer", "minimum": 0}, "tags": {"type": "array", "items": {"enum": ["a", "b"]}}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("answer", "detail"),
    [
        ('{"name": "Ada", "age": 36, "tags": ["a"]}', None),
        ("not json", "the answer is not JSON"),
        ('{"name": "Ada"}', "$: missing 'age'"),
        ('{"name": "Ada", "age": true}', "$.age: expected integer"),
        ('{"name": "Ada", "age": -1}', "$.age: below 0"),
        ('{"name": "Ada", "age": 3, "tags": ["c"]}', "$.tags[0]: not one of the allowed values"),
        ('{"name": "Ada", "age": 3, "extra": 1}', "$: unexpected 'extra'"),
        ('[1, 2]', "$: expected object"),
    ],
)
def test_json_schema_verifier_names_the_first_problem(answer, detail):
    verdict = V.verify_json_schema(answer, SCHEMA)
    assert verdict == (V.OK if detail is None else V.Verdict(False, V.JSON_SCHEMA, detail))


def test_regex_refusal_and_logprob_verifiers():
    final = re.compile(r"^#### -?\d+$", re.M)
    assert V.verify_regex("steps\n#### 12", final).accepted
    assert V.verify_regex("steps, no final line", final).reason == V.REGEX
    assert V.verify_refusal("I\u2019m not sure this can be solved.") == V.Verdict(False, V.REFUSAL, "the answer says \"i'm not sure\"")
    assert V.verify_refusal("The answer is 4.").accepted
    assert V.verify_logprobs([-0.1, -0.2, -3.5], min_logprob=-3.0).reason == V.LOGPROBS
    assert V.verify_logprobs([-0.1, -0.2, -3.5], min_logprob=-4.0).accepted
    assert V.verify_logprobs([-1.0, -2.0], mean_logprob=-1.2) == V.Verdict(False, V.LOGPROBS, "mean log-probability -1.50 is below -1.2")
    assert V.verify_logprobs([], min_logprob=-1.0).accepted


def test_logprobs_are_read_from_chat_and_completions_responses():
    chat = {"choices": [{"logprobs": {"content": [{"token": "a", "logprob": -0.5}, {"token": "b", "logprob": -1.5}]}}]}
    completion = {"choices": [{"logprobs": {"token_logprobs": [-0.25, None, -2.0]}}]}
    assert V.chat_logprobs(chat) == [-0.5, -1.5]
    assert V.chat_logprobs(completion) == [-0.25, -2.0]
    assert V.chat_logprobs({"choices": [{"message": {}}]}) == []
    assert V.chat_logprobs({}) == []


def test_answer_signals_of_a_gsm8k_answer():
    prompt = "Liam is 16 years old now. Two years ago, Liam's age was twice the age of Vince. How old is Vince now?"
    answer = "Two years ago Liam was 16 - 2 = <<16-2=14>>14 and Vince 14 / 2 = <<14/2=7>>7.\n#### 7"
    assert V.answer_signals(answer, prompt) == {
        "unused": "0",
        "final_is_last": "True",
        "checked": "2",
        "wrong": "0",
        "final": "int",
        "negative": "False",
        "refusal": "False",
        "lines": "0",
        "chars": "6",
        "magnitude": "0",
    }
    assert V.final_answer("#### 1,200") == "1200"
    assert V.answer_signals("I cannot tell.", prompt)["refusal"] == "True"
    assert V.answer_signals("The answer is 3", "add 1 and 2")["unused"] == "2"
