"""The models file, backend names and lazy loading (rs_assistant.engine.registry)."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import pytest

from rs_assistant.core.protocol import ErrorCode, ProtocolError, Task
from rs_assistant.engine.backends.base import Backend
from rs_assistant.engine.registry import BACKENDS, DEFAULT_MODEL, Registry, default_model_path, parse_models_file
from tests.engine.fakes import BoxSegmenter, EchoBackend, write_models_file


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_models_file_names_models_backends_and_their_config(tmp_path):
    path = write(
        tmp_path,
        """
[models.qwen]
backend = "qwen2_5_vl"
path = "checkpoints/qwen"
max_pixels = 1003520
[models.sam]
backend = "sam"
path = "/abs/sam"
[models.tanks]
backend = "florence2"
path = "~/florence"
segmenter = "sam"
""",
    )
    specs = parse_models_file(path)
    assert list(specs) == ["qwen", "sam", "tanks"]
    qwen = specs["qwen"]
    assert qwen.backend == "qwen2_5_vl"
    assert qwen.config == {"path": str(tmp_path / "checkpoints" / "qwen"), "max_pixels": 1003520}
    assert qwen.origin == str(path) and qwen.segmenter is None
    assert specs["sam"].config["path"] == "/abs/sam"
    assert specs["tanks"].segmenter == "sam" and "segmenter" not in specs["tanks"].config
    assert specs["tanks"].config["path"] == str(Path.home() / "florence")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[models.a\nbackend = 1", "is not valid TOML"),
        ("[engine]\nport = 1", "unknown top-level key(s) engine"),
        ("models = 3", "'models' must be a table"),
        ("[models]\na = 3", "[models.a] must be a table"),
        ("[models.a]\npath = '/x'", "[models.a] has no 'backend' key"),
        ("[models.a]\nbackend = 'llava'", "[models.a] backend = 'llava' is unknown"),
        ("[models.a]\nbackend = 'not a class ref'", "[models.a] backend = 'not a class ref' is unknown"),
        ("[models.a]\nbackend = 'sam'\npath = 3", "[models.a] path must be a path string"),
        ("[models.a]\nbackend = 'sam'\napi_key_file = ''", "[models.a] api_key_file must be a path string"),
        ("[models.a]\nbackend = 'sam'\nsegmenter = 'nope'", "[models.a] segmenter = 'nope' names no model"),
        ("[models.a]\nbackend = 'sam'\nsegmenter = 'a'", "[models.a] names itself as its segmenter"),
        ("[models.a]\nbackend = 'sam'\nsegmenter = 2", "[models.a] segmenter must be a model name"),
    ],
)
def test_a_bad_models_file_is_refused_naming_the_file_and_the_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ProtocolError) as info:
        parse_models_file(path)
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert str(path) in info.value.message
    assert expected in info.value.message


def test_a_missing_models_file_is_named(tmp_path):
    with pytest.raises(ProtocolError, match="models file .*nope.toml does not exist"):
        Registry.from_file(tmp_path / "nope.toml")


def test_default_exists_without_a_file_and_names_its_missing_weights_folder():
    registry = Registry.from_file(None)
    assert registry.names == (DEFAULT_MODEL,)
    assert registry.spec(DEFAULT_MODEL).backend == "rsa"
    (info,) = registry.infos()
    assert (info.name, info.backend, info.loaded) == ("default", "rsa", False)
    if default_model_path().is_dir():  # shipped: it loads with no models file
        assert {t.value for t in registry.backend(DEFAULT_MODEL).tasks} >= {"caption", "ground", "segment", "change"}
        return
    with pytest.raises(ProtocolError) as error:
        registry.backend(DEFAULT_MODEL)
    assert error.value.code is ErrorCode.MODEL_LOAD_FAILED
    assert str(default_model_path()) in error.value.message


def test_a_missing_weights_folder_is_named(tmp_path):
    missing = tmp_path / "no-such-weights"
    registry = Registry.from_file(write(tmp_path, f"[models.mine]\nbackend = 'rsa'\npath = '{missing}'\n"))
    with pytest.raises(ProtocolError) as error:
        registry.backend("mine")
    assert error.value.code is ErrorCode.MODEL_LOAD_FAILED
    assert str(missing) in error.value.message


def test_unknown_model_lists_the_known_ones(tmp_path):
    registry = Registry.from_file(write_models_file(tmp_path / "models.toml"))
    with pytest.raises(ProtocolError) as error:
        registry.spec("gpt-7")
    assert error.value.code is ErrorCode.UNKNOWN_MODEL
    assert "'gpt-7'" in error.value.message and "echo" in error.value.message


def test_file_models_come_first_and_may_redefine_default(tmp_path):
    registry = Registry.from_file(write_models_file(tmp_path / "models.toml"))
    assert registry.names[0] == "echo" and registry.names[-1] == DEFAULT_MODEL
    redefined = Registry.from_file(write(tmp_path, "[models.default]\nbackend = 'tests.engine.fakes:EchoBackend'\n"))
    assert redefined.names == (DEFAULT_MODEL,)
    assert isinstance(redefined.backend(DEFAULT_MODEL), EchoBackend)


def test_backends_are_created_lazily_and_once(tmp_path):
    registry = Registry.from_file(
        write(
            tmp_path,
            "[models.later]\nbackend = 'tests.engine.no_such_module:Nothing'\n"
            "[models.echo]\nbackend = 'tests.engine.fakes:EchoBackend'\nmood = 'fine'\n",
        ),
        device="cpu",
    )
    # Parsing imported nothing; the broken one fails only when asked for.
    echo = registry.backend("echo")
    assert isinstance(echo, EchoBackend) and registry.backend("echo") is echo
    assert echo.config == {"mood": "fine"} and echo.device == "cpu" and not echo.loaded
    with pytest.raises(ProtocolError) as error:
        registry.backend("later")
    assert error.value.code is ErrorCode.MODEL_LOAD_FAILED
    assert "tests.engine.no_such_module" in error.value.message


def test_a_class_that_is_not_a_backend_is_refused(tmp_path):
    registry = Registry.from_file(write(tmp_path, "[models.x]\nbackend = 'tests.engine.fakes:NotABackend'\n"))
    with pytest.raises(ProtocolError, match="is not a Backend class") as error:
        registry.backend("x")
    assert error.value.code is ErrorCode.MODEL_LOAD_FAILED


def test_infos_list_tasks_chained_segmentation_and_loaded_state(tmp_path):
    registry = Registry.from_file(write_models_file(tmp_path / "models.toml"))
    infos = {info.name: info for info in registry.infos()}
    assert set(infos["echo"].tasks) == {Task.CAPTION, Task.CHAT, Task.GROUND, Task.CHANGE, Task.SEGMENT}
    assert set(infos["slow"].tasks) == {Task.CAPTION, Task.CHAT, Task.GROUND, Task.CHANGE}  # no segmenter named
    assert infos["seg"].tasks == (Task.SEGMENT,)
    assert not any(info.loaded for info in infos.values())
    registry.backend("seg").ensure_loaded()
    assert isinstance(registry.backend("seg"), BoxSegmenter)
    assert {i.name for i in registry.infos() if i.loaded} == {"seg"}


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_builtin_backend_name_points_at_its_class(name):
    module_name, class_name = BACKENDS[name].split(":")
    if importlib.util.find_spec(module_name) is None:
        pytest.skip(f"{module_name} is not written yet")
    cls = getattr(importlib.import_module(module_name), class_name)
    assert issubclass(cls, Backend) and cls.tasks
