import hashlib

import pytest

from shoal.evaluate import dataset


def test_prompt_items_become_one_user_message_and_choices_are_lettered():
    data = (
        b'{"id": "fr", "prompt": "Capital of France?", "reference": "Paris"}\n'
        b"\n# a comment\n"
        b'{"prompt": "Pick the city.", "choices": ["Rome", "a dog"], "reference": "A"}\n'
    )
    parsed = dataset.parse(data)
    assert parsed.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert [i.id for i in parsed.items] == ["fr", "line-4"]
    assert parsed.items[0].messages == [{"role": "user", "content": "Capital of France?"}]
    assert parsed.items[1].messages[0]["content"] == (
        "Pick the city.\n\nA. Rome\nB. a dog\n\nAnswer with the letter of the correct option."
    )


def test_messages_items_are_sent_as_written():
    parsed = dataset.parse(b'{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "reference": "Hello"}')
    assert parsed.items[0].messages[0] == {"role": "system", "content": "Be brief."}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"reference": "x"}', "line 1: set exactly one of prompt or messages"),
        (b'{"prompt": "x", "messages": []}', "line 1: set exactly one of prompt or messages"),
        (b'{"prompt": "x", "answer": "y"}', "line 1: unknown field(s) answer"),
        (b"not json", "line 1: not JSON"),
        (b'{"prompt": "x", "choices": ["only one"]}', "line 1: choices must be a list of 2 to 26 strings"),
        (b'{"prompt": "x", "scorers": {"numeric": 3}}', "line 1: scorers must map scorer names to objects"),
        (b'{"id": 1, "prompt": "x"}\n{"id": 1, "prompt": "y"}', "line 2: duplicate item id '1'"),
        (b"\n# nothing\n", "the dataset has no items"),
    ],
)
def test_bad_lines_are_errors_that_name_the_line(line, message):
    with pytest.raises(dataset.DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        dataset.parse(line)


def test_object_store_uris_must_be_copied_into_the_pod_first():
    import asyncio

    with pytest.raises(dataset.DatasetError, match="must be copied into the pod"):
        asyncio.run(dataset.load_uri("s3://bucket/eval.jsonl", client=None))
