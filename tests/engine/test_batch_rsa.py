"""The RSA backend's batched path (run_batch, embed_images, score_text) on the tiny random-weight checkpoint.

Batching must not change answers: several windows through one encoder pass and one batched
generation give what each gives on its own, including boxes and masks (scripted answers).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from transformers import LogitsProcessorList

from rs_assistant.core.protocol import BatchRequest, Options, Task
from rs_assistant.engine.backends.base import BackendCall, BackendResult
from rs_assistant.engine.backends.rsa import RSABackend
from rs_assistant.engine.batch import CACHE_ENV, run_job
from rs_assistant.engine.registry import Registry
from rs_assistant.engine.service import Engine
from tests.engine import rasters
from tests.engine.scripted import Script

RNG = np.random.default_rng(7)
WINDOWS = [RNG.integers(0, 256, (48, 80, 3), dtype=np.uint8) for _ in range(3)]
AFTERS = [RNG.integers(0, 256, (48, 80, 3), dtype=np.uint8) for _ in range(3)]


@pytest.fixture(scope="module")
def backend(tiny_rsa_path) -> RSABackend:
    loaded = RSABackend("rsa-tiny", {"path": str(tiny_rsa_path)}, "cpu")
    loaded.ensure_loaded()
    return loaded


def calls(task: Task, prompt: str = "", pairs: bool = False) -> list[BackendCall]:
    cancel = threading.Event()
    images = [(w, a) if pairs else (w,) for w, a in zip(WINDOWS, AFTERS)]
    return [BackendCall(task, list(i), prompt, (), Options(max_new_tokens=24), cancel) for i in images]


def same(batched: list[BackendResult], alone: list[BackendResult]) -> None:
    assert len(batched) == len(alone)
    for a, b in zip(batched, alone):
        assert a.text == b.text
        assert [(d.kind, d.label) for d in a.detections] == [(d.kind, d.label) for d in b.detections]
        for da, db in zip(a.detections, b.detections):
            assert da.score == pytest.approx(db.score, abs=1e-4)
            assert da.box == pytest.approx(db.box) if da.box is not None else db.box is None
            if da.mask is not None:
                assert np.array_equal(da.mask, db.mask)


@pytest.mark.parametrize(
    ("task", "prompt", "pairs"),
    [(Task.CAPTION, "", False), (Task.GROUND, "find the storage tanks", False), (Task.CHANGE, "", True)],
)
def test_a_batch_answers_what_each_window_answers_alone(backend, task, prompt, pairs):
    batch = calls(task, prompt, pairs)
    same(backend.run_batch(batch), [backend.run(call) for call in batch])


def test_scripted_boxes_and_masks_come_back_per_window_in_a_batch(tiny_rsa_path, monkeypatch):
    own = RSABackend("scripted", {"path": str(tiny_rsa_path)}, "cpu")
    own.ensure_loaded()
    answer = own.processor.ground_answer([("storage tank", (8, 4, 30, 20))], (80, 48)) + " water [SEG]"
    ids = own.processor.tokenizer(answer, add_special_tokens=False)["input_ids"]
    generate = own.model.generate
    monkeypatch.setattr(
        own.model, "generate",
        lambda *a, **k: generate(*a, logits_processor=LogitsProcessorList([Script(ids, own.processor.token_ids["</s>"])]), **k),
    )  # fmt: skip
    batch = calls(Task.SEGMENT, "segment the tanks")
    batched = own.run_batch(batch)
    same(batched, [own.run(call) for call in batch])
    for result in batched:
        kinds = [d.kind.value for d in result.detections]
        assert kinds[0] == "box" and result.detections[0].label == "storage tank"
        assert all(d.mask.shape == (48, 80) for d in result.detections if d.mask is not None)


def test_mixed_tasks_in_one_batch_keep_their_order(backend):
    mixed = [calls(Task.CAPTION)[0], calls(Task.GROUND, "find the tanks")[1], calls(Task.CAPTION)[2]]
    same(backend.run_batch(mixed), [backend.run(call) for call in mixed])


def test_search_scores_a_description_against_cached_visual_tokens(backend):
    embeddings = backend.embed_images(WINDOWS)
    config = backend.model.config
    assert (
        embeddings.shape == (3, config.num_image_tokens, config.text_config.hidden_size)
        and embeddings.dtype == np.float32
    )
    scores = backend.score_text(embeddings, "two storage tanks next to a parking lot")
    assert scores.shape == (3,) and np.isfinite(scores).all() and (scores < 0).all()  # mean log-probabilities
    one_by_one = [
        backend.score_text(backend.embed_images([w]), "two storage tanks next to a parking lot")[0] for w in WINDOWS
    ]
    assert scores == pytest.approx(one_by_one, abs=1e-4)
    other = backend.score_text(embeddings, "a river crosses fields")
    assert not np.allclose(scores, other)  # the prompt matters


def test_a_search_job_runs_on_the_rsa_model(tiny_rsa_path, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    models = tmp_path / "models.toml"
    models.write_text(f'[models.tiny]\nbackend = "rsa"\npath = "{tiny_rsa_path}"\n')
    engine = Engine(Registry.from_file(models))
    path = rasters.rgb_uint8(tmp_path / "scene.tif", width=96, height=64)
    request = BatchRequest(task=Task.RETRIEVE, sources=(str(path),), output_crs=rasters.UTM, model="tiny", prompt="storage tanks",
                           tile_size=32, overlap=0, batch_size=0, options=Options(top_k=2))  # fmt: skip
    events = list(run_job(engine, request))
    assert events[-1]["event"] == "done", events[-1]
    assert events[0]["batch_size"] == RSABackend.TILE_BATCH_SIZE == 16  # the model's own: a small model batches more
    (ranked,) = [e for e in events if e["event"] == "ranked"]
    assert [f["properties"]["rank"] for f in ranked["features"]] == [1, 2]
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 6  # one cached embedding per tile
