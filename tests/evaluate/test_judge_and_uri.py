"""The LLM judge through an OpenAI-compatible endpoint, and datasets fetched over http."""

import asyncio
import json
import subprocess
import sys

import httpx
import pytest

from shoal.evaluate import dataset, runner
from shoal.evaluate.dataset import Item
from shoal.testing.fake_engine import start_fake_engine


@pytest.mark.parametrize(
    ("text", "expected"),
    [("PASS", 1.0), ("FAIL", 0.0), ("Verdict: pass.", 1.0), ("fail - the capital is wrong", 0.0), ("I cannot tell", None), ("PASSING", None)],
)
def test_parse_judgement_reads_the_first_pass_or_fail_word(text, expected):
    assert runner.parse_judgement(text) == expected


def test_judge_messages_carry_the_rubric_question_reference_and_response():
    item = Item(id="q", messages=[{"role": "user", "content": "Capital of France?"}], reference="Paris")
    messages = runner.judge_messages("Be strict.", item, "Lyon")
    assert messages == [
        {"role": "system", "content": "Be strict.\nReply with one word: PASS or FAIL."},
        {"role": "user", "content": "Question:\nCapital of France?\n\nReference answer:\nParis\n\nResponse to judge:\nLyon"},
    ]


@pytest.mark.parametrize(("judge_reply", "exit_code", "value"), [("PASS", 0, 1.0), ("FAIL", 1, 0.0)])
def test_shoal_eval_scores_with_an_llm_judge_endpoint(tmp_path, judge_reply, exit_code, value):
    items = tmp_path / "items.jsonl"
    items.write_text("\n".join(json.dumps({"id": f"q{i}", "prompt": "Capital of France?", "reference": "Paris"}) for i in range(30)))
    termination = tmp_path / "termination-log"
    output = tmp_path / "results.json"
    with start_fake_engine(model="ckpt", reply="It is Paris.") as candidate, start_fake_engine(model="judge", reply=judge_reply) as judge:
        spec = {
            "dataset": {"configMapRef": {"name": "d", "key": "items.jsonl"}},
            "scorers": [{"type": "llmJudge", "name": "judged", "judge": {"url": judge.base_url, "model": "judge", "rubric": "Be strict."}}],
            "thresholds": [{"metric": "judged", "min": 0.8}],
        }
        (tmp_path / "spec.json").write_text(json.dumps(spec))
        process = subprocess.run(
            [sys.executable, "-m", "shoal.cli", "eval", "--spec", str(tmp_path / "spec.json"), "--dataset", str(items),
             "--endpoint", candidate.base_url, "--model", "ckpt", "--termination-log", str(termination), "--output-json", str(output)],
            capture_output=True, text=True, timeout=120,
        )
        judge_body = judge.stats()["last_body"]
    assert process.returncode == exit_code, process.stderr
    message = json.loads(termination.read_text())
    assert message["metrics"][0]["name"] == "judged"
    assert message["metrics"][0]["value"] == value
    assert judge_body["model"] == "judge"
    assert judge_body["messages"][0]["content"].startswith("Be strict.")
    assert "Response to judge:\nIt is Paris." in judge_body["messages"][1]["content"]
    results = json.loads(output.read_text())
    assert results["items"][0] == {
        "id": "q0", "response": "It is Paris.", "error": None,
        "latencySeconds": results["items"][0]["latencySeconds"], "scores": {"judged": value},
    }


def test_a_dataset_uri_is_fetched_with_the_given_client():
    body = b'{"prompt": "Capital of France?", "reference": "Paris"}\n'

    def handler(request: httpx.Request) -> httpx.Response:
        assert str(request.url) == "https://data.example.com/eval.jsonl"
        return httpx.Response(200, content=body)

    async def fetch():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await dataset.load_uri("https://data.example.com/eval.jsonl", client=client)

    loaded = asyncio.run(fetch())
    assert [i.reference for i in loaded.items] == ["Paris"]
    assert loaded.digest.startswith("sha256:")


def test_a_dataset_uri_that_answers_404_is_a_dataset_error():
    async def fetch():
        transport = httpx.MockTransport(lambda request: httpx.Response(404, text="no such key"))
        async with httpx.AsyncClient(transport=transport) as client:
            return await dataset.load_uri("https://data.example.com/missing.jsonl", client=client)

    with pytest.raises(dataset.DatasetError, match="cannot fetch the dataset from https://data.example.com/missing.jsonl"):
        asyncio.run(fetch())
