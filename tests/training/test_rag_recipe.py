"""The rag recipe (RS-RAG) on its tiny config: the knowledge index (saved, reloaded, gold passage first,
re-ranking), training with retrieved knowledge (falling loss, overfit), resume, the export served by the
engine with its sources, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rs_assistant.core.protocol import AnalyzeRequest, Options, Task
from rs_assistant.engine.models.rag import Fusion, KnowledgeIndex, Passage
from rs_assistant.engine.registry import Registry
from rs_assistant.engine.service import Engine
from tests.training.fixtures import write_json
from tests.training.rsa_recipes import assert_resumes_to_the_same_weights, mean, png, records, tiny_values, train_cli
from training.data.formats import DataFormatError
from training.loop import METRICS_FILE, train
from training.recipes.rag.train import RAGConfig, RAGRecipe

BACKEND = "rs_assistant.engine.backends.rag:RAGBackend"
STEPS = 80
# (passage id, title, text, image colour or None, question's answer)
PASSAGES = (
    (
        "P001",
        "Green Forest Reserve",
        "a protected forest with dense trees near a river.",
        (20, 120, 30),
        "the forest reserve",
    ),
    ("P002", "Blue Harbor", "a harbor with ships, boats and storage tanks.", (30, 60, 200), "the blue harbor"),
    ("P003", "Grey Airport", "an airport with two runways and many planes.", (200, 200, 200), "the grey airport"),
    ("P004", "Desert Road", "a road crosses the desert.", None, None),
)


def write_rag(root: Path) -> Path:
    """knowledge.jsonl (three passages with an image, one without), images/, qa_train.json (a question per image)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines, records_ = [], []
    for pid, title, text, colour, answer in PASSAGES:
        entry = {"id": pid, "title": title, "text": text, "country": "Nowhere"}
        if colour is not None:
            pixels = np.clip(np.array(colour)[None, None] + rng.integers(-20, 20, (32, 32, 3)), 0, 255).astype("uint8")
            Image.fromarray(pixels).save(root / "images" / f"{pid}.png")
            entry["image"] = f"{pid}.png"
            records_.append(
                {
                    "id": f"q_{pid}",
                    "image": f"{pid}.png",
                    "knowledge_ids": [pid],
                    "conversations": [
                        {"from": "human", "value": "<image>\nWhat is this place?"},
                        {"from": "gpt", "value": answer},
                    ],
                }
            )
        lines.append(json.dumps(entry))
    (root / "knowledge.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(root / "qa_train.json", records_)
    return root


@pytest.fixture(scope="module")
def rag_data(tmp_path_factory) -> Path:
    return write_rag(tmp_path_factory.mktemp("rag-data") / "RSWK")


def parts(tiny_clip_folder: Path, tiny_lm_folder: Path) -> dict[str, str]:
    return {"vision_path": str(tiny_clip_folder), "lm_path": str(tiny_lm_folder)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_clip_folder, tiny_lm_folder, rag_data) -> RAGConfig:
    tmp = tmp_path_factory.mktemp("rag-recipe")
    changes = dict(
        parts(tiny_clip_folder, tiny_lm_folder),
        data_root=str(rag_data),
        max_steps=STEPS,
        checkpoint_every=40,
        caption_metrics=["BLEU", "ROUGE_L"],
    )
    return train_cli("rag", tmp, RAGConfig, **changes)


def test_loss_falls_and_the_answers_are_overfit(trained):
    log = records(trained.work_dir)
    assert len(log) == STEPS
    assert mean(log, "loss", slice(-5, None)) < 0.1 * mean(log, "loss", slice(0, 5))
    metrics = json.loads((Path(trained.out) / METRICS_FILE).read_text())
    assert metrics["R@1"] == 1.0 and metrics["R@2"] == 1.0  # the gold passage first (its image is the query)
    assert metrics["accuracy"] == 1.0 and metrics["Bleu_1"] > 0.9 and metrics["ROUGE_L"] > 0.9


def test_the_index_is_saved_and_reloaded_and_finds_the_gold_passage_first(trained, rag_data):
    index = KnowledgeIndex.load(Path(trained.out) / "index")
    assert [p.id for p in index.passages] == [p[0] for p in PASSAGES]
    assert (Path(trained.out) / "index" / "text.usearch").is_file() and len(index.text_index) == 4
    assert len(index.image_index) == 3 and index.passages[0].meta == {"country": "Nowhere"}
    for pid, *_ in PASSAGES[:3]:
        query = np.asarray(Image.open(rag_data / "images" / f"{pid}.png").convert("RGB"))
        hits = index.search(query, "What is this place?", top_k=2, candidates=4)
        assert hits[0].id == pid and hits[0].similarities["image_image"] == pytest.approx(1.0, abs=1e-4)
    assert (
        index.search(text="Desert Road: a road crosses the desert.", top_k=1)[0].id == "P004"
    )  # a text query, no image


def test_reranking_changes_the_order_where_it_should():
    """The query image's embedding is q. A's text is close to q (0.9) but its image is not; B's text is less close
    (0.5) but B's image is the query image: the first stage (image -> text) ranks A first, the fusion ranks B first."""
    q = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    a_text = np.array([0.9, np.sqrt(1 - 0.81), 0.0], dtype=np.float32)
    b_text = np.array([0.5, 0.0, np.sqrt(0.75)], dtype=np.float32)
    a_image = np.array([0.0, 0.0, 1.0], dtype=np.float32)
    index = KnowledgeIndex(
        None,
        None,
        [Passage("A", "a"), Passage("B", "b")],
        np.stack([a_text, b_text]),
        np.stack([a_image, q]),
        [0, 1],
        Fusion(0.5, 0.5, 0.0),
    )
    index.embed_images = lambda images, batch_size=32: q[None]  # the query image embeds to q
    first = index.search(image="query", top_k=2, rerank=False)
    fused = index.search(image="query", top_k=2)
    assert [h.id for h in first] == ["A", "B"] and [h.id for h in fused] == ["B", "A"]
    assert fused[0].score == pytest.approx(0.75) and fused[1].score == pytest.approx(0.45)


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, tiny_clip_folder, tiny_lm_folder, rag_data):
    def config(tmp: Path) -> RAGConfig:
        return RAGConfig.from_dict(
            tiny_values(
                "rag",
                tmp,
                **parts(tiny_clip_folder, tiny_lm_folder),
                data_root=str(rag_data),
                max_steps=6,
                checkpoint_every=100,
                evaluate=False,
            )
        )

    assert_resumes_to_the_same_weights(RAGRecipe, config, tmp_path, stop_at=2)


def test_the_engine_answers_with_the_retrieved_knowledge(trained, tmp_path, rag_data):
    (tmp_path / "models.toml").write_text(f'[models.rs-rag]\nbackend = "{BACKEND}"\npath = "{trained.out}"\n')
    engine = Engine(Registry.from_file(tmp_path / "models.toml"))
    image = png(rag_data / "images" / "P002.png", (32, 32))
    answer = engine.analyze(
        AnalyzeRequest(
            task=Task.CHAT,
            images=(image,),
            output_crs="EPSG:3857",
            model="rs-rag",
            prompt="What is this place?",
            options=Options(max_new_tokens=16),
        )
    )
    text, _, sources = answer.text.partition("\n\nSources: ")
    assert text == "the blue harbor" and sources.startswith("[P002] Blue Harbor; ")
    caption = engine.analyze(
        AnalyzeRequest(
            task=Task.CAPTION,
            images=(image,),
            output_crs="EPSG:3857",
            model="rs-rag",
            options=Options(max_new_tokens=8),
        )
    )
    assert "Sources: [P002] Blue Harbor" in caption.text


def test_bad_input_says_what_was_found_and_expected(tmp_path, tiny_clip_folder, tiny_lm_folder, rag_data):
    def config(**changes) -> RAGConfig:
        values = dict(parts(tiny_clip_folder, tiny_lm_folder), data_root=str(rag_data))
        values.update(changes)
        return RAGConfig.from_dict(tiny_values("rag", tmp_path, **values))

    with pytest.raises(
        DataFormatError,
        match=r"no knowledge\.jsonl or knowledge\.json \(folder holds P001\.png.*expected "
        r"an RS-RAG folder",
    ):
        RAGRecipe(config(data_root=str(rag_data / "images")))
    with pytest.raises(DataFormatError, match=r"no qa_test\.json \(splits found: train\)"):
        RAGRecipe(config(train_split="test"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "knowledge.jsonl").write_text('{"title": "no id"}\n')
    with pytest.raises(
        DataFormatError,
        match=r"knowledge\.jsonl passage 0: found an object with keys 'title'; expected a "
        r"passage object",
    ):
        RAGRecipe(config(data_root=str(bad)))
    with pytest.raises(ValueError, match=r"init_from .* holds a 'clip' model .*expected an RSA checkpoint folder"):
        train(RAGRecipe(config(init_from=str(tiny_clip_folder))))
    with pytest.raises(ValueError, match=r"CLIP checkpoint .* holds a 'qwen2' model"):
        train(RAGRecipe(config(retriever_path=str(tiny_lm_folder))))
    with pytest.raises(ValueError, match="data_root is empty"):
        config(data_root="")
