"""The models file: read, change, write back; errors name the file and the key; the catalogue is sound."""

from __future__ import annotations

import tomllib

import pytest

from rs_assistant.core.catalog import CATALOG, catalog_entry
from rs_assistant.core.models_file import ModelsFileError, read_models_file, write_models_file
from rs_assistant.core.protocol import Task

HAND_WRITTEN = """
[models.qwen]
backend = "qwen2_5_vl"
path = "/models/Qwen2.5-VL-3B-Instruct"
max_pixels = 1003520
[models.tanks]
backend = "florence2"
path = 'C:\\models\\florence "large"'
segmenter = "qwen"
threshold = 0.25
verbose = true
labels = ["tank", "ship"]
[models.tanks.extra]
note = "nested table"
"""


def test_adding_a_model_and_a_route_keeps_every_other_entry(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text(HAND_WRITTEN, encoding="utf-8")
    before = tomllib.loads(HAND_WRITTEN)["models"]

    changed = (
        read_models_file(path).with_model("sam", {"backend": "sam", "path": "models/sam"}).with_route("segment", "sam")
    )
    write_models_file(changed)

    data = tomllib.loads(path.read_text(encoding="utf-8"))
    assert data["models"]["qwen"] == before["qwen"] and data["models"]["tanks"] == before["tanks"]
    assert data["models"]["sam"] == {"backend": "sam", "path": "models/sam"}
    assert data["tasks"] == {"segment": "sam"}
    assert list(data["models"]) == ["qwen", "tanks", "sam"]
    assert not [p for p in tmp_path.iterdir() if p.name != "models.toml"]  # no temp file left


def test_removing_a_model_drops_its_routes(tmp_path):
    path = tmp_path / "models.toml"
    write_models_file(read_models_file(path).with_model("sam", {"backend": "sam"}).with_route(Task.SEGMENT, "sam"))
    write_models_file(read_models_file(path).without_model("sam"))
    assert read_models_file(path).models == {} and read_models_file(path).tasks == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[models.a\nbackend = 1", "is not valid TOML"),
        ("[tasks]\nground = 'nope'", "[tasks] ground = 'nope' names no model"),
        ("[models.a]\nbackend = 'sam'\n[tasks]\nfly = 'a'", "[tasks] fly is not a task"),
        ("[models.auto]\nbackend = 'sam'", "'auto' is reserved"),
        ("[tasks]\nground = 'auto'", "would route to itself"),
        ("tasks = 3", "'tasks' must be a table"),
        ("[engine]\nport = 1", "unknown top-level key(s) engine"),
    ],
)
def test_a_hand_edited_mistake_names_the_file_and_the_key(tmp_path, text, expected):
    path = tmp_path / "models.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ModelsFileError) as error:
        read_models_file(path)
    assert str(path) in str(error.value) and expected in str(error.value)


def test_a_missing_file_reads_as_empty_and_routes_to_default(tmp_path):
    models = read_models_file(tmp_path / "none.toml")
    assert models.models == {} and models.route(Task.GROUND) == "default"


def test_the_catalogue_names_are_unique_and_every_entry_says_what_it_downloads():
    names = [e.name for e in CATALOG]
    assert len(names) == len(set(names))
    assert catalog_entry("sam-vit-base").allow_patterns == ("*.json", "model.safetensors")
    with pytest.raises(KeyError, match="florence2-base"):
        catalog_entry("gpt-7")
