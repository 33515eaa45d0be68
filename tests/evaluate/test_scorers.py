import pytest

from shoal.api.modeltier import ScorerSpec
from shoal.evaluate import scorers
from shoal.evaluate.dataset import Item


def item(reference=None, choices=None, params=None):
    return Item(id="i", messages=[{"role": "user", "content": "q"}], reference=reference, choices=choices, params=params or {})


@pytest.mark.parametrize(
    ("response", "reference", "expected"),
    [
        ("Paris", "Paris", 1.0),
        ("  paris. ", "Paris", 1.0),
        ('"Paris"', "Paris", 1.0),
        ("The capital is Paris.", "Paris", 0.0),
        ("Lyon", ["Paris", "Lyon"], 1.0),
        ("12", 12, 1.0),
        ("12", 12.0, 1.0),
    ],
)
def test_exact_match_normalises_case_quotes_and_final_punctuation(response, reference, expected):
    assert scorers.score(ScorerSpec(type="exactMatch"), response, item(reference)) == expected


@pytest.mark.parametrize(
    ("response", "reference", "expected"),
    [
        ("The capital of France is Paris.", "Paris", 1.0),
        ("The answer is 14.", "4", 0.0),
        ("The answer is 4.", "4", 1.0),
        ("new york city", "New York", 1.0),
        ("Parisian", "Paris", 0.0),
    ],
)
def test_contains_matches_whole_words_only(response, reference, expected):
    assert scorers.score(ScorerSpec(type="contains"), response, item(reference)) == expected


def test_regex_uses_the_items_pattern_over_the_scorers():
    spec = ScorerSpec(type="regex", pattern=r"^yes\b")
    assert scorers.score(spec, "yes, it is", item()) == 1.0
    assert scorers.score(spec, "no", item()) == 0.0
    override = item(params={"regex": {"pattern": r"(?i)^no\b"}})
    assert scorers.score(spec, "No.", override) == 1.0


@pytest.mark.parametrize(
    ("response", "expected_letter"),
    [
        ("B", "B"),
        ("B. Paris", "B"),
        ("(C)", "C"),
        ("**A**", "A"),
        ("The answer is C.", "C"),
        ("Answer: (B)", "B"),
        ("Paris", "B"),  # quotes exactly one option's text
        ("I think it's either Paris or Rome", None),
        ("A lot of people think so", None),
    ],
)
def test_extract_choice_reads_the_picked_letter(response, expected_letter):
    assert scorers.extract_choice(response, ["Rome", "Paris", "Madrid"]) == expected_letter


def test_choice_accepts_the_letter_or_the_option_text_as_reference():
    spec = ScorerSpec(type="choice")
    assert scorers.score(spec, "B", item("B", ["Rome", "Paris"])) == 1.0
    assert scorers.score(spec, "B", item("Paris", ["Rome", "Paris"])) == 1.0
    assert scorers.score(spec, "A", item("Paris", ["Rome", "Paris"])) == 0.0


def test_choice_without_a_usable_reference_is_a_scorer_error():
    with pytest.raises(scorers.ScorerError, match="right letter"):
        scorers.score(ScorerSpec(type="choice"), "A", item("Berlin", ["Rome", "Paris"]))


@pytest.mark.parametrize(
    ("response", "reference", "tolerance", "expected"),
    [
        ("12", 12, 0.0, 1.0),
        ("7 + 5 = 12", 12, 0.0, 1.0),
        ("It is 1,234.5 metres", 1234.5, 0.0, 1.0),
        ("3.14", 3.14159, 0.01, 1.0),
        ("3.2", 3.14159, 0.01, 0.0),
        ("-4", -4, 0.0, 1.0),
        ("no idea", 4, 0.0, 0.0),
        ("0.30000000000000004", 0.3, 0.0, 1.0),
    ],
)
def test_numeric_compares_the_last_number_within_tolerance(response, reference, tolerance, expected):
    spec = ScorerSpec(type="numeric", tolerance=tolerance)
    assert scorers.score(spec, response, item(reference)) == expected


def test_numeric_tolerance_can_be_set_per_item():
    spec = ScorerSpec(type="numeric", tolerance=0.0)
    assert scorers.score(spec, "10", item(9.5, params={"numeric": {"tolerance": 0.5}})) == 1.0


SCHEMA = {
    "type": "object",
    "required": ["name", "age"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
    },
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ('{"name": "Ada", "age": 36}', 1.0),
        ('```json\n{"name": "Ada", "age": 36, "tags": ["a"]}\n```', 1.0),
        ('{"name": "Ada"}', 0.0),
        ('{"name": "Ada", "age": -1}', 0.0),
        ('{"name": "Ada", "age": true}', 0.0),
        ('{"name": "Ada", "age": 3, "tags": ["c"]}', 0.0),
        ('{"name": "Ada", "age": 3, "extra": 1}', 0.0),
        ("Sure! Here is the JSON", 0.0),
    ],
)
def test_json_schema_scorer_parses_and_validates(response, expected):
    assert scorers.score(ScorerSpec(type="jsonSchema", jsonSchema=SCHEMA), response, item()) == expected


def test_schema_errors_name_the_path_that_failed():
    errors = scorers.schema_errors({"name": "", "age": 1.5}, SCHEMA)
    assert errors == ["$.name: shorter than 1", "$.age: expected integer, got float"]


def test_schema_any_of_and_one_of():
    assert scorers.schema_errors(3, {"anyOf": [{"type": "string"}, {"type": "integer"}]}) == []
    assert scorers.schema_errors(3, {"oneOf": [{"type": "number"}, {"type": "integer"}]}) == [
        "$: does not match exactly one of oneOf"
    ]


def test_an_item_can_opt_out_of_a_scorer():
    skipped = item("x", params={"exact_match": {"skip": True}})
    assert scorers.score(ScorerSpec(type="exactMatch"), "x", skipped) is None


def test_metric_names_default_to_the_type_in_snake_case():
    assert scorers.metric_name(ScorerSpec(type="jsonSchema")) == "json_schema"
    assert scorers.metric_name(ScorerSpec(type="exactMatch", name="capitals")) == "capitals"


def test_a_scorer_that_needs_a_reference_says_so():
    with pytest.raises(scorers.ScorerError, match="needs a reference"):
        scorers.score(ScorerSpec(type="exactMatch"), "x", item())
