"""The OpenAI-compatible routes (rs_assistant.engine.openai_api) driven by the official ``openai`` client against
a real uvicorn server on 127.0.0.1, answering with the tiny RSA model (random weights: its answers are arbitrary
tokens, so answers are compared with each other, not with fixed text), and the pieces under them: the text
watch (stop strings, streamed pieces), the RSA prompt built within the context, cancellation between steps.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from rs_assistant.core.protocol import Message, Options, ProtocolError, Role, Task
from rs_assistant.engine.backends.base import BackendCall
from rs_assistant.engine.backends.decoding import Decoding, TextWatch
from rs_assistant.engine.backends.qwen2_5_vl import Qwen25VLBackend
from rs_assistant.engine.backends.rsa import RSABackend
from rs_assistant.engine.models.rsa.processing_rsa import PromptTooLong, RSAProcessor
from rs_assistant.engine.registry import ModelSpec, Registry
from rs_assistant.engine.server import create_app
from rs_assistant.engine.service import Engine
from tests.engine import rasters
from tests.engine.fakes import serving

TOKEN = "openai-api-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUESTION = "what is in the image?"
IMAGE = np.random.default_rng(3).integers(0, 256, (40, 56, 3), dtype=np.uint8)
SAMPLED = {"temperature": 1.0, "seed": 11}  # the tiny model's greedy answers are mostly location tokens (no text)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, tiny_rsa_path: Path) -> Engine:
    folder = tmp_path_factory.mktemp("openai-api")
    (folder / "models.toml").write_text(
        f'[models.tiny]\nbackend = "rsa"\npath = "{tiny_rsa_path.as_posix()}"\n'
        f'[models.tiny-slow]\nbackend = "rsa"\npath = "{tiny_rsa_path.as_posix()}"\n'
        '[models.echo]\nbackend = "tests.engine.fakes:EchoBackend"\n',
        encoding="utf-8",
    )
    return Engine(Registry.from_file(folder / "models.toml"))


@pytest.fixture(scope="module")
def url(engine: Engine) -> Iterator[str]:
    with serving(create_app(engine, TOKEN, request_timeout_s=60)) as base:
        yield base


@pytest.fixture()
def oai(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0, timeout=60)


@pytest.fixture()
def client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, headers=AUTH, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def processor(tiny_rsa_path: Path) -> RSAProcessor:
    return RSAProcessor.from_pretrained(tiny_rsa_path)


def data_url(array: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(rasters.png_bytes(array)).decode()


def ask(text: str = QUESTION, image: np.ndarray | None = None) -> list[dict[str, Any]]:
    """``messages``: one user message, with ``image`` as a data URL when given."""
    if image is None:
        return [{"role": "user", "content": text}]
    return [
        {
            "role": "user",
            "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": data_url(image)}}],
        }
    ]


def chat(oai: openai.OpenAI, **request: Any) -> Any:
    request.setdefault("model", "tiny")
    request.setdefault("messages", ask())
    return oai.chat.completions.create(**request)


# --- answers ---------------------------------------------------------------------------------------------------------


def test_a_chat_without_image_is_answered_with_the_tokens_counted(oai, processor):
    completion = chat(oai, max_tokens=6)
    (choice,) = completion.choices
    assert completion.object == "chat.completion" and completion.model == "tiny"
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    prompt = processor.prompt_ids(Task.CHAT, QUESTION, images=0)
    assert completion.usage.prompt_tokens == len(prompt)
    # the random model never ends within 6 tokens: the limit cut the answer, and says so
    assert choice.finish_reason == "length" and completion.usage.completion_tokens == 6
    assert completion.usage.total_tokens == len(prompt) + 6


def test_an_image_sent_as_a_data_url_is_what_the_model_reads(oai, processor):
    with_image = chat(oai, messages=ask(image=IMAGE), max_completion_tokens=3)
    without = chat(oai, messages=ask(), max_completion_tokens=3)
    assert with_image.usage.prompt_tokens == without.usage.prompt_tokens + processor.num_image_tokens
    assert with_image.usage.completion_tokens == 3 and with_image.choices[0].finish_reason == "length"


def test_sampling_follows_the_seed_and_greedy_is_the_default(oai):
    first, again, other = (
        chat(oai, max_tokens=24, temperature=1.0, seed=s).choices[0].message.content for s in (5, 5, 6)
    )
    assert first == again != other
    greedy = [chat(oai, max_tokens=24).choices[0].message.content for _ in range(2)]
    assert greedy[0] == greedy[1] == chat(oai, max_tokens=24, temperature=0).choices[0].message.content


def test_n_answers_each_with_its_index_and_the_usage_of_all(oai):
    completion = chat(oai, n=2, max_tokens=16, **SAMPLED)
    assert [c.index for c in completion.choices] == [0, 1]
    first, second = (c.message.content for c in completion.choices)
    assert first != second  # answer i is drawn with seed + i
    assert first == chat(oai, max_tokens=16, **SAMPLED).choices[0].message.content
    single = chat(oai, max_tokens=16, temperature=1.0, seed=SAMPLED["seed"] + 1)
    assert second == single.choices[0].message.content
    assert completion.usage.completion_tokens == 32 and completion.usage.prompt_tokens == single.usage.prompt_tokens


def test_a_stop_string_cuts_the_answer_and_ends_it(oai):
    full = chat(oai, max_tokens=40, **SAMPLED)
    text = full.choices[0].message.content
    words = [w for w in text.split(" ")[1:] if len(w) >= 2 and "\ufffd" not in w]
    stop = words[0][:2]
    cut = text.index(stop)
    assert cut > 0
    stopped = chat(oai, max_tokens=40, stop=[stop, "never written"], **SAMPLED)
    assert stopped.choices[0].message.content == text[:cut]
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.completion_tokens < full.usage.completion_tokens  # generation stopped there
    streamed = chat(oai, max_tokens=40, stop=stop, stream=True, **SAMPLED)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == text[:cut]


# --- streaming -------------------------------------------------------------------------------------------------------


def test_a_stream_sends_the_answer_in_pieces_that_join_to_it_then_the_usage(oai):
    whole = chat(oai, max_tokens=40, **SAMPLED)
    chunks = list(chat(oai, max_tokens=40, stream=True, stream_options={"include_usage": True}, **SAMPLED))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1
    assert "".join(pieces) == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].object == "chat.completion.chunk"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    last = chunks[-1]
    assert last.choices == [] and last.usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_a_stream_of_n_answers_names_each_answer(oai):
    chunks = list(chat(oai, n=2, max_tokens=12, stream=True, **SAMPLED))
    texts = {0: "", 1: ""}
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] += choice.delta.content or ""
    whole = chat(oai, n=2, max_tokens=12, **SAMPLED)
    assert texts == {c.index: c.message.content for c in whole.choices}


@pytest.fixture()
def slow(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """tiny-slow's language model takes 40 ms a step; returns the times its steps began."""
    backend = engine.registry.backend("tiny-slow")
    backend.ensure_loaded()
    language_model = backend.model.language_model
    forward = language_model.forward
    steps: list[float] = []

    def step(*args: Any, **kwargs: Any) -> Any:
        steps.append(time.monotonic())
        time.sleep(0.04)
        return forward(*args, **kwargs)

    monkeypatch.setattr(language_model, "forward", step)
    return steps


def test_a_stream_is_sent_while_it_is_generated_and_leaving_stops_the_generation(oai, slow):
    started = time.monotonic()
    stream = chat(oai, model="tiny-slow", max_tokens=200, stream=True, **SAMPLED)  # 200 steps: 8 s
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    first_piece = time.monotonic() - started
    stream.close()
    left, steps_then = time.monotonic(), len(slow)
    assert first_piece < 4 and steps_then < 100  # the first words came long before the answer's end (200 steps)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (not slow or slow[-1] > time.monotonic() - 0.5):
        time.sleep(0.1)  # until no step has begun for 0.5 s
    after = [t for t in slow if t > left]
    # the server notices the closed connection and sets the request's cancel Event, which stops the
    # generation at its next step: a few 40 ms steps at most, not the 100 or more left to write
    assert len(after) <= 10, f"{len(after)} steps after the client left"
    again = chat(oai, model="tiny-slow", max_tokens=2, timeout=10)  # the model is free again
    assert again.usage.completion_tokens == 2


def test_a_stream_opens_as_soon_as_the_model_begins_to_write(oai, slow):
    started = time.monotonic()
    stream = chat(oai, model="tiny-slow", max_tokens=100, stream=True)  # 4 s, and greedy: an answer with no text
    first = next(iter(stream))
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    assert time.monotonic() - started < 2
    stream.close()


# --- what requests may hold ------------------------------------------------------------------------------------------


def test_what_openai_clients_send_by_default_is_accepted(oai):
    completion = chat(
        oai,
        messages=[
            {"role": "developer", "content": "You describe satellite images."},
            {"role": "user", "content": "hello", "name": "ana"},
            {"role": "assistant", "content": None, "refusal": None, "tool_calls": []},
            *ask(image=IMAGE),
        ],
        max_tokens=4,
        n=1,
        stream=False,
        top_p=1,
        frequency_penalty=0,
        presence_penalty=0,
        logprobs=False,
        response_format={"type": "text"},
        tools=[],
        tool_choice="none",
        store=False,
        user="ana",
        metadata={"project": "test"},
        modalities=["text"],
    )
    assert completion.choices[0].finish_reason == "length"


def test_an_earlier_answer_sent_back_as_the_client_received_it_is_history(oai):
    first = chat(oai, max_tokens=4)
    messages = [*ask(), first.choices[0].message, {"role": "user", "content": "and then?"}]
    follow_up = chat(oai, messages=messages, max_tokens=4)
    assert follow_up.usage.prompt_tokens > first.usage.prompt_tokens


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "area"}}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"parallel_tool_calls": True}, "parallel_tool_calls"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logit_bias": {"42": 5}}, "logit_bias"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"presence_penalty": -1}, "presence_penalty"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
        ({"store": True}, "store"),
    ],
)
def test_what_the_engine_cannot_do_is_a_400_naming_the_field(oai, fields, param):
    with pytest.raises(openai.BadRequestError) as error:
        chat(oai, max_tokens=4, **fields)
    body = error.value.body
    assert body["param"] == param and body["code"] == "bad_request" and body["type"] == "invalid_request_error"
    assert body["message"].startswith(f"{param}: ")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"stream": "false"}, "stream"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 2.5}, "max_completion_tokens"),
        ({"n": 0}, "n"),
        ({"n": 99}, "n"),
        ({"temperature": "0.5"}, "temperature"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"seed": "7"}, "seed"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": 5}, "stop"),
        ({"stream_options": {"include_usage": "yes"}, "stream": True}, "stream_options.include_usage"),
        ({"model": 7}, "model"),
        ({"best_of": 2}, "best_of"),
        ({"messages": [{"role": "user", "content": "hi", "colour": "red"}]}, "messages[0]"),
    ],
)
def test_fields_are_typed_strictly(client, fields, param):
    response = client.post("/v1/chat/completions", json={"model": "tiny", "messages": ask(), **fields})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "bad_request" and error["type"] == "invalid_request_error"
    assert error["param"] == param or error["param"].startswith(param), error


def test_a_tool_message_is_refused_naming_it(oai):
    messages = [*ask(), {"role": "tool", "tool_call_id": "call_1", "content": "42"}, *ask("and now?")]
    with pytest.raises(openai.BadRequestError) as error:
        chat(oai, messages=messages)
    assert error.value.body["param"] == "messages[1].role" and "calls no tools" in error.value.body["message"]
    with pytest.raises(openai.BadRequestError) as error:
        calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
        chat(oai, messages=[*ask(), {"role": "assistant", "content": None, "tool_calls": calls}, *ask("and?")])
    assert error.value.body["param"] == "messages[1].tool_calls"


def test_requests_valid_in_form_that_cannot_be_answered_are_422_naming_why(oai, client):
    with pytest.raises(openai.UnprocessableEntityError) as error:  # echo answers about images only
        chat(oai, model="echo", max_tokens=4)
    assert error.value.body["code"] == "bad_image_count" and "cannot chat without an image" in error.value.message
    with pytest.raises(openai.UnprocessableEntityError) as error:  # echo decodes greedily
        chat(oai, model="echo", messages=ask(image=IMAGE), temperature=0.7)
    assert error.value.body["param"] == "temperature"
    assert chat(oai, model="echo", messages=ask(image=IMAGE), temperature=0).choices[0].message.content
    with pytest.raises(openai.UnprocessableEntityError) as error:
        chat(oai, stream_options={"include_usage": True})
    assert error.value.body["param"] == "stream_options"
    three = [{"type": "image_url", "image_url": {"url": data_url(IMAGE)}}] * 3
    with pytest.raises(openai.UnprocessableEntityError) as error:
        chat(oai, messages=[{"role": "user", "content": [{"type": "text", "text": "compare"}, *three]}])
    assert error.value.body["code"] == "bad_image_count"
    with pytest.raises(openai.UnprocessableEntityError) as error:  # the model needs a question
        chat(oai, messages=ask("  "))
    assert error.value.body["code"] == "invalid_value" and "needs a question" in error.value.message
    assert error.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError, match="data URL") as error:  # the schema's pattern: 400
        chat(
            oai,
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}],
        )
    assert error.value.body["param"] == "messages[0].content[0].image_url.url"


def test_a_conversation_longer_than_the_context_is_refused_at_once(oai, client):
    history = [
        {"role": "user", "content": "how many buildings are there? " * 700_000},
        {"role": "assistant", "content": "ok"},
    ]
    started = time.monotonic()
    with pytest.raises(openai.UnprocessableEntityError) as error:  # valid by the schema: 422 here (OpenAI: 400)
        chat(oai, messages=[*history, *ask()])
    assert time.monotonic() - started < 10  # 21 MB: refused without being tokenized
    body = error.value.body
    assert body["code"] == "context_length_exceeded" and body["param"] == "messages"
    assert "context is 256" in body["message"]
    assert chat(oai, max_tokens=2).usage.completion_tokens == 2


# --- models ----------------------------------------------------------------------------------------------------------


def test_models_are_listed_and_retrieved_as_openai_describes_them(oai, tiny_rsa_path):
    listed = {m.id: m for m in oai.models.list()}
    assert {"tiny", "tiny-slow", "echo", "default"} <= set(listed)
    tiny = oai.models.retrieve("tiny")
    assert tiny.object == "model" and tiny.owned_by == "rs_assistant"
    assert tiny.created == int(os.stat(tiny_rsa_path).st_mtime) == listed["tiny"].created
    assert tiny.model_extra["backend"] == "rsa" and "chat" in tiny.model_extra["tasks"]
    assert all(isinstance(m.created, int) and m.created > 0 for m in listed.values())
    with pytest.raises(openai.NotFoundError) as error:
        oai.models.retrieve("gpt-7")
    assert error.value.body["code"] == "unknown_model" and error.value.body["type"] == "not_found_error"
    assert error.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError, match="unknown model 'gpt-7'"):
        chat(oai, model="gpt-7")


def test_the_document_describes_the_chat_request_and_its_stream(client):
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    request = schemas["ChatCompletionRequest"]
    assert request["additionalProperties"] is False and request["required"] == ["messages"]
    assert {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "temperature",
        "top_p",
        "seed",
        "stop",
        "stream",
        "stream_options",
    } <= set(request["properties"])
    assert "tools" in request["properties"] and request["properties"]["tools"]["anyOf"][0]["maxItems"] == 0
    answer = document["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert answer["text/event-stream"]["schema"] == {"$ref": "#/components/schemas/ChatCompletionChunk"}
    assert "/v1/models/{model_id}" in document["paths"]
    assert set(schemas["ModelEntry"]["properties"]) >= {"id", "object", "created", "owned_by"}
    assert set(schemas["ErrorDetail"]["properties"]) == {"code", "message", "type", "param"}


# --- the pieces under the route --------------------------------------------------------------------------------------


def test_the_text_watch_sends_settled_text_and_cuts_at_a_stop_string():
    pieces: list[str] = []
    watch = TextWatch(stop=["END"], on_text=pieces.append)
    for text in ["Two", "Two roads", "Two roads E", "Two roads EN", "Two roads ENDED"]:
        stopped = watch.update(text)
    assert stopped and watch.stopped
    assert pieces == ["", "Two", " roads", " "]  # "": begun; "E" and "EN" could begin the stop string: held back
    assert watch.finish("Two roads ENDED and more") == "Two roads " and "".join(pieces) == "Two roads "
    plain: list[str] = []
    watch = TextWatch(on_text=plain.append)
    for text in ["caf", "caf\ufffd", "café ", "café au lait"]:
        watch.update(text)
    assert watch.finish("café au lait") == "café au lait" and "".join(plain) == "café au lait"
    assert "\ufffd" not in "".join(plain)


def test_the_rsa_prompt_is_built_newest_turn_first_within_the_context(processor):
    history = [
        Message(Role.USER, "what is this?"),
        Message(Role.ASSISTANT, " a parking lot. "),
        Message(Role.SYSTEM, "ignored"),
        Message(Role.USER, "and the  river?"),
        Message(Role.ASSISTANT, ""),
    ]
    for task, prompt, images in [
        (Task.CHAT, "how many vehicles?", 1),
        (Task.CHAT, "hi", 0),
        (Task.CHANGE, "", 2),
        (Task.GROUND, "find the storage tanks", 1),
    ]:
        text = processor.format_prompt(task, prompt, history if task is Task.CHAT else (), images=images)
        expected = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
        expected = [
            t for i in expected for t in ([i] * processor.num_image_tokens if i in processor._placeholder_ids else [i])
        ]
        assert processor.prompt_ids(task, prompt, history if task is Task.CHAT else (), images) == expected
    ids = processor.prompt_ids(Task.CHAT, "hi", history, 1)
    assert processor.prompt_ids(Task.CHAT, "hi", history, 1, limit=len(ids)) == ids
    with pytest.raises(PromptTooLong):
        processor.prompt_ids(Task.CHAT, "hi", history, 1, limit=len(ids) - 1)


def test_a_huge_history_is_never_tokenized(processor, monkeypatch):
    seen: list[int] = []
    tokenize = type(processor.tokenizer).__call__

    def counting(self: Any, text: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(len(text) if isinstance(text, str) else sum(len(t) for t in text))
        return tokenize(self, text, *args, **kwargs)

    monkeypatch.setattr(type(processor.tokenizer), "__call__", counting)
    huge = "the river floods the fields every spring. " * 1_500_000  # 63 MB
    history = [Message(Role.USER, huge), Message(Role.ASSISTANT, "yes"), Message(Role.USER, "and then?")]
    started = time.monotonic()
    with pytest.raises(PromptTooLong):
        processor.prompt_ids(Task.CHAT, "why?", history, 1, limit=255)
    assert time.monotonic() - started < 1.0
    assert max(seen) < 1000  # only the newest messages, each small, were tokenized


def test_a_cancelled_generation_stops_at_the_next_step(tiny_rsa_path, monkeypatch):
    backend = RSABackend("tiny", {"path": str(tiny_rsa_path)}, "cpu")
    backend.ensure_loaded()
    language_model = backend.model.language_model
    forward = language_model.forward
    cancel = threading.Event()
    steps = {"all": 0, "after cancel": 0}

    def step(*args: Any, **kwargs: Any) -> Any:
        steps["all"] += 1
        steps["after cancel"] += cancel.is_set()
        if steps["all"] == 5:
            cancel.set()  # as the server does when the client leaves, from another thread
        return forward(*args, **kwargs)

    monkeypatch.setattr(language_model, "forward", step)
    call = BackendCall(
        Task.CHAT, [], "what is it?", options=Options(max_new_tokens=100), cancel=cancel, decoding=Decoding(1.0, seed=1)
    )
    with pytest.raises(ProtocolError) as error:
        backend.run(call)
    assert error.value.code.value == "cancelled"
    assert steps["all"] == 5 and steps["after cancel"] == 0  # the step under way finished; no other began


# --- the other backends that chat without an image -------------------------------------------------------------------


def test_the_openai_backend_passes_the_chat_on_and_streams_what_the_server_writes(url, oai, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN, encoding="utf-8")
    remote = {"url": f"{url}/v1", "model": "tiny", "api_key_file": str(token_file)}
    engine = Engine(Registry({"remote": ModelSpec("remote", "openai", remote)}))
    pieces: list[str] = []
    reply = engine.chat(
        "remote",
        [],
        QUESTION,
        options=Options(max_new_tokens=30),
        decoding=Decoding(temperature=1.0, seed=SAMPLED["seed"]),
        on_text=lambda index, piece: pieces.append(piece),
    )
    direct = chat(oai, max_tokens=30, **SAMPLED)  # the same request, straight to the server
    assert reply.text == direct.choices[0].message.content and "".join(pieces) == reply.text
    assert len([p for p in pieces if p]) > 1  # as the server sent them
    (answer,) = reply.answers
    assert reply.prompt_tokens == direct.usage.prompt_tokens  # the server's count
    assert answer.completion_tokens == 30 and answer.finish_reason == "length"
    stop = next(w for w in reply.text.split(" ")[1:] if len(w) >= 2 and "\ufffd" not in w)[:2]
    stopped = engine.chat(
        "remote",
        [],
        QUESTION,
        options=Options(max_new_tokens=30),
        decoding=Decoding(temperature=1.0, seed=SAMPLED["seed"]),
        stop=[stop],
    )
    assert stopped.text == reply.text[: reply.text.index(stop)] and stopped.answers[0].finish_reason == "stop"


def test_qwen_chats_without_image_sampled_and_watched(tiny_qwen_path):
    backend = Qwen25VLBackend("qwen", {"path": str(tiny_qwen_path)}, "cpu")
    backend.ensure_loaded()
    pieces: list[str] = []

    def run(**changes: Any) -> Any:
        call = BackendCall(Task.CHAT, [], QUESTION, options=Options(max_new_tokens=20), **changes)
        return backend.run(call)

    result = run(decoding=Decoding(temperature=1.0, seed=4), watch=TextWatch(on_text=pieces.append))
    assert result.text and result.text == run(decoding=Decoding(temperature=1.0, seed=4)).text
    assert "".join(pieces) == result.text[: len("".join(pieces))] and len([p for p in pieces if p]) > 1
    assert result.completion_tokens == 20 and result.finish_reason == "length"
    assert result.prompt_tokens == len(backend._prepare(BackendCall(Task.CHAT, [], QUESTION)).inputs["input_ids"][0])
    assert run().text == run().text != result.text  # greedy by default
