"""The instruction router (rs_assistant.engine.router) on its labelled phrasings, and its bad input.

    .venv/bin/python -m pytest -p no:pytest_qgis -p no:pytest-qt tests/engine/test_router.py -s

``router_phrasings.jsonl`` is the set the rules were written against (>= 300 phrasings, English and
French, with follow-ups that need the conversation); ``router_heldout.jsonl`` was written after the
rules and never tuned on: its accuracy is the honest estimate for phrasings nobody has tried.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.router import accuracy, evaluate, load
from rs_assistant.core.protocol import Intent, Message, ProtocolError, Role, RouteRequest, RouteResult
from rs_assistant.engine.router import ClassList, route, route_text

HERE = Path(__file__).parent
BUILT_IN = ClassList(
    "default",
    (
        "buildings",
        "roads",
        "parking lots",
        "vehicles",
        "storage tanks",
        "trees",
        "forests",
        "grass areas",
        "fields",
        "water bodies",
        "bare soil areas",
    ),
    frozenset({"building", "house", "vehicle", "truck", "lake", "pond", "river", "storage tank", "tree"}),
)


def by_language(path: Path) -> dict[str, float]:
    results = evaluate(load(path))
    return {lang: accuracy([r for r in results if r["lang"] == lang]) for lang in ("en", "fr")}


def test_the_test_set_has_300_phrasings_in_english_and_french_with_context():
    rows = load(HERE / "router_phrasings.jsonl")
    assert len(rows) >= 300
    assert {r["lang"] for r in rows} == {"en", "fr"} and min(
        sum(r["lang"] == l for r in rows) for l in ("en", "fr")
    ) >= 120
    assert {r["intent"] for r in rows} == {i.value for i in Intent}
    assert sum(bool(r.get("history")) for r in rows) >= 20


def test_accuracy_per_language_is_at_least_0_9():
    scores = by_language(HERE / "router_phrasings.jsonl")
    print(f"\nrouter accuracy on its test set: {scores}")
    assert all(score >= 0.9 for score in scores.values()), scores


def test_held_out_phrasings_are_mostly_routed_right():
    scores = by_language(HERE / "router_heldout.jsonl")
    print(f"\nrouter accuracy on held-out phrasings: {scores}")
    assert all(score >= 0.85 for score in scores.values()), scores


@pytest.mark.parametrize(
    ("text", "intent", "prompt"),
    [
        ("how many cars are there?", Intent.COUNT, "cars"),
        ("outline the water", Intent.SEGMENT, "water"),
        ("combien de bâtiments dans cette zone ?", Intent.COUNT, "buildings"),
        ("délimite l'eau", Intent.SEGMENT, "water"),
        ("/find storage tanks", Intent.GROUND, "storage tanks"),
    ],
)
def test_the_issue_examples(text, intent, prompt):
    result = route_text(text)
    assert (result.intent, result.prompt) == (intent, prompt)


def test_what_changed_is_a_change_question_with_or_without_a_pair():
    assert route_text("what changed?", images=2).intent is Intent.CHANGE
    assert route_text("what changed?", images=1).intent is Intent.CHANGE
    assert route_text("what's new?", images=2).intent is Intent.CHANGE
    assert route_text("what's new?", images=1).intent is not Intent.CHANGE


def test_follow_ups_take_the_object_and_task_from_the_last_request():
    history = [("user", "/find buildings"), ("assistant", "Found 12 buildings")]
    largest = route_text("and the largest one?", history)
    assert (largest.intent, largest.prompt) == (Intent.GROUND, "the largest building")
    assert "largest building" in largest.assumed
    assert (route_text("how many?", history).intent, route_text("how many?", history).prompt) == (
        Intent.COUNT,
        "buildings",
    )
    assert route_text("outline them", history).prompt == "buildings"
    assert route_text("how many?").intent is Intent.CHAT  # nothing to count without context: asked as a question
    assert route_text("how many?").assumed


def test_a_bare_noun_is_found_and_the_router_says_so():
    result = route_text("storage tanks")
    assert result.intent is Intent.GROUND and result.prompt == "storage tanks"
    assert "Assumed" in result.assumed and result.confidence < 0.9


def test_a_close_call_says_which_task_was_chosen():
    result = route_text("find and outline the buildings")
    assert result.intent in (Intent.GROUND, Intent.SEGMENT)
    assert result.assumed and ("/find" in result.assumed or "/segment" in result.assumed)


def test_a_class_the_model_does_not_know_is_named_with_the_ones_it_knows():
    result = route(RouteRequest("find the helicopters"), BUILT_IN)
    assert result.intent is Intent.GROUND and result.known_classes == BUILT_IN.names
    assert "helicopters" in result.assumed and "storage tanks" in result.assumed
    water = route(RouteRequest("outline the water"), BUILT_IN)
    assert (water.prompt, water.known_classes, water.assumed) == ("water bodies", (), "")  # known under another name
    assert route(RouteRequest("how many cars are there?"), BUILT_IN).prompt == "vehicles"
    assert route(RouteRequest("find the helicopters")).known_classes == ()  # open vocabulary: no check


def test_the_built_in_model_class_list_comes_from_its_config():
    from rs_assistant.engine.registry import Registry
    from rs_assistant.engine.router import classes_for

    classes = classes_for(Registry.from_file(None), "auto")
    assert classes is not None and "buildings" in classes.names and "ground" not in classes.names
    assert classes.resolve("house") == "house" and classes.resolve("cars") == "vehicles"


def test_an_empty_prompt_is_refused_with_what_to_do():
    with pytest.raises(ProtocolError, match="empty.*find the buildings"):
        RouteRequest("   ")
    with pytest.raises(ProtocolError, match="1 or 2"):
        RouteRequest("find cars", images=3)


def test_route_messages_round_trip():
    request = RouteRequest("how many?", (Message(Role.USER, "/find cars"),), 2, "auto")
    assert RouteRequest.from_dict(request.to_dict()) == request
    result = RouteResult(Intent.COUNT, "cars", "", 0.8)
    assert RouteResult.from_dict(result.to_dict()) == result
    assert set(result.to_dict()) == {"intent", "prompt", "assumed", "confidence"}
