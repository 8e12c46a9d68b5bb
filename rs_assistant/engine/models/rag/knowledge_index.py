"""The RS-RAG knowledge index: CLIP embeddings of passages and their images in usearch indexes, search
with re-ranking, and the knowledge-augmented prompt.

**Build** (:meth:`KnowledgeIndex.build`): every passage's text (``title: text``, cut to CLIP's context)
through CLIP's text tower, every passage image through its image tower; L2-normalised vectors in two
usearch indexes (inner product = cosine): ``text.usearch`` (all passages) and ``image.usearch`` (the
passages that have an image). RS-RAG's Multi-Modal Knowledge Vector Database, as we read it.

**Search** (:meth:`KnowledgeIndex.search`), a query image and/or a query text:

1. *candidates*: the ``candidates`` nearest passages of each available route: image -> passage texts,
   image -> passage images, text -> passage texts (approximate, from the usearch graphs);
2. *re-ranking*: each candidate's exact similarities from the stored vectors, fused
   ``score = w_it * s(image, text) + w_ii * s(image, passage image) + w_tt * s(question, text)`` with
   the weights of the routes the query and the passage have (renormalised; a passage without an image
   takes its image-text similarity for the missing term); sorted by score.

``rerank=False`` returns the first stage alone, ordered by the primary route (image -> text when there is
an image, else text -> text), for comparison.

**Prompt** (:func:`knowledge_prompt`): ``Knowledge: [ID] TITLE: TEXT ... Question: QUESTION``, each
passage cut to ``passage_chars``; what the VLM is fine-tuned on and served with.

On disk (``save``/``load``): ``clip/`` (a transformers CLIP folder), ``passages.jsonl``,
``text.usearch``, ``image.usearch``, ``text_embeddings.npy``, ``image_embeddings.npy``,
``image_rows.json`` (image-index row -> passage row) and ``index_config.json``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

INDEX_CONFIG = "index_config.json"
INDEX_FORMAT = "rs_rag_index"


@dataclass(frozen=True)
class Passage:
    """One knowledge passage (an RSWK-style entry): id, title, text, optional image and metadata."""

    id: str
    text: str
    title: str = ""
    image: str | None = None  # path of the passage's image (absolute once loaded)
    meta: dict = field(default_factory=dict)

    def document(self) -> str:
        return f"{self.title}: {self.text}" if self.title else self.text


@dataclass(frozen=True)
class Fusion:
    """Re-ranking weights of the three similarity routes."""

    image_text: float = 0.4
    image_image: float = 0.4
    text_text: float = 0.2


@dataclass(frozen=True)
class Hit:
    row: int  # passage row in the index
    id: str
    score: float
    similarities: dict  # route -> exact similarity


def knowledge_prompt(passages: Sequence[Passage], question: str, passage_chars: int = 300) -> str:
    """The knowledge-augmented prompt the VLM reads."""
    parts = []
    for passage in passages:
        text = " ".join(passage.document().split())
        parts.append(f"[{passage.id}] {text[:passage_chars].rstrip()}")
    return f"Knowledge: {' '.join(parts)} Question: {' '.join(question.split())}"


def _usearch(dim: int):
    from usearch.index import Index

    return Index(ndim=dim, metric="ip", dtype="f32")


class KnowledgeIndex:
    def __init__(
        self,
        clip: Any,
        processor: Any,
        passages: Sequence[Passage],
        text_embeddings: np.ndarray,
        image_embeddings: np.ndarray,
        image_rows: Sequence[int],
        fusion: Fusion = Fusion(),
        device: str | torch.device = "cpu",
    ) -> None:
        self.clip, self.processor, self.device = clip, processor, torch.device(device)
        self.passages = list(passages)
        self.text_embeddings = np.asarray(text_embeddings, dtype=np.float32)
        self.image_embeddings = np.asarray(image_embeddings, dtype=np.float32).reshape(
            -1, self.text_embeddings.shape[1]
        )
        self.image_rows = [int(r) for r in image_rows]
        self.fusion = fusion
        self._image_of = {row: i for i, row in enumerate(self.image_rows)}
        dim = self.text_embeddings.shape[1]
        self.text_index = _usearch(dim)
        self.text_index.add(np.arange(len(self.passages)), self.text_embeddings)
        self.image_index = _usearch(dim)
        if self.image_rows:
            self.image_index.add(np.arange(len(self.image_rows)), self.image_embeddings)

    # --- embeddings --------------------------------------------------------------------------------

    @torch.no_grad()
    def embed_images(self, images: Sequence[Any], batch_size: int = 32) -> np.ndarray:
        """L2-normalised CLIP image embeddings of PIL images or H x W x 3 uint8 arrays."""
        out = []
        for start in range(0, len(images), batch_size):
            part = list(images[start : start + batch_size])
            kwargs = {"input_data_format": "channels_last"} if isinstance(part[0], np.ndarray) else {}
            pixels = self.processor.image_processor(images=part, return_tensors="pt", **kwargs)["pixel_values"]
            features = self.clip.get_image_features(pixel_values=pixels.to(self.device, self.clip.dtype))
            features = getattr(features, "pooler_output", features)
            out.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.clip.config.projection_dim), np.float32)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """L2-normalised CLIP text embeddings (each text cut to CLIP's context)."""
        out = []
        context = int(self.clip.config.text_config.max_position_embeddings)
        for start in range(0, len(texts), batch_size):
            batch = self.processor.tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=context,
                return_tensors="pt",
            )
            features = self.clip.get_text_features(**{k: v.to(self.device) for k, v in batch.items()})
            features = getattr(features, "pooler_output", features)
            out.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.clip.config.projection_dim), np.float32)

    @classmethod
    def build(
        cls,
        clip: Any,
        processor: Any,
        passages: Sequence[Passage],
        open_image: Callable[[str], Any],
        fusion: Fusion = Fusion(),
        device: str | torch.device = "cpu",
    ) -> KnowledgeIndex:
        """Embed ``passages`` (texts, and images through ``open_image(path)``) with a loaded CLIP."""
        if not passages:
            raise ValueError("the knowledge corpus holds no passage")
        empty = cls.__new__(cls)
        empty.clip, empty.processor, empty.device = clip.to(device).eval(), processor, torch.device(device)
        texts = empty.embed_texts([p.document() for p in passages])
        rows = [i for i, p in enumerate(passages) if p.image]
        images = (
            empty.embed_images([open_image(passages[i].image) for i in rows]) if rows else np.zeros((0, texts.shape[1]))
        )
        log.info(
            "knowledge index: %d passages, %d with an image, %d-d CLIP embeddings",
            len(passages),
            len(rows),
            texts.shape[1],
        )
        return cls(clip, processor, passages, texts, images, rows, fusion, device)

    # --- search ------------------------------------------------------------------------------------

    def search(
        self, image: Any = None, text: str | None = None, top_k: int = 3, candidates: int = 16, rerank: bool = True
    ) -> list[Hit]:
        """The ``top_k`` passages for a query image and/or text (see the module docstring)."""
        if image is None and not text:
            raise ValueError("a knowledge search needs a query image or a query text")
        q_image = self.embed_images([image])[0] if image is not None else None
        q_text = self.embed_texts([text])[0] if text else None
        count = min(candidates, len(self.passages))
        pool: list[int] = []

        def add(keys: Sequence[int], rows: Sequence[int] | None = None) -> None:
            for key in keys:
                row = int(key) if rows is None else rows[int(key)]
                if row not in pool:
                    pool.append(row)

        if q_image is not None:
            add(self.text_index.search(q_image, count).keys)
            if rerank and self.image_rows:
                add(self.image_index.search(q_image, min(count, len(self.image_rows))).keys, self.image_rows)
        if q_text is not None and (rerank or q_image is None):
            add(self.text_index.search(q_text, count).keys)
        hits = [self._score(row, q_image, q_text) for row in pool]
        if rerank:
            hits.sort(key=lambda h: -h.score)
        else:  # the first stage: the primary route's order
            route = "image_text" if q_image is not None else "text_text"
            hits.sort(key=lambda h: -h.similarities[route])
        return hits[:top_k]

    def _score(self, row: int, q_image: np.ndarray | None, q_text: np.ndarray | None) -> Hit:
        sims, weights = {}, {}
        text = self.text_embeddings[row]
        if q_image is not None:
            sims["image_text"], weights["image_text"] = float(q_image @ text), self.fusion.image_text
            own = self._image_of.get(row)
            sims["image_image"] = float(q_image @ self.image_embeddings[own]) if own is not None else sims["image_text"]
            weights["image_image"] = self.fusion.image_image
        if q_text is not None:
            sims["text_text"], weights["text_text"] = float(q_text @ text), self.fusion.text_text
        total = sum(weights.values()) or 1.0
        score = sum(weights[k] * sims[k] for k in sims) / total
        return Hit(row, self.passages[row].id, score, sims)

    # --- disk --------------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.clip.save_pretrained(folder / "clip")
        self.processor.save_pretrained(folder / "clip")
        with (folder / "passages.jsonl").open("w", encoding="utf-8") as handle:
            for p in self.passages:
                handle.write(json.dumps({**asdict(p), "image": Path(p.image).name if p.image else None}) + "\n")
        np.save(folder / "text_embeddings.npy", self.text_embeddings)
        np.save(folder / "image_embeddings.npy", self.image_embeddings)
        self.text_index.save(str(folder / "text.usearch"))
        self.image_index.save(str(folder / "image.usearch"))
        (folder / "image_rows.json").write_text(json.dumps(self.image_rows), encoding="utf-8")
        (folder / INDEX_CONFIG).write_text(
            json.dumps(
                {
                    "format": INDEX_FORMAT,
                    "passages": len(self.passages),
                    "dim": int(self.text_embeddings.shape[1]),
                    "fusion": asdict(self.fusion),
                },
                indent=1,
            ),
            encoding="utf-8",
        )
        return folder

    @classmethod
    def load(
        cls, folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> KnowledgeIndex:
        """An index folder written by :meth:`save`; ValueError naming what is missing."""
        from transformers import CLIPModel, CLIPProcessor
        from usearch.index import Index

        folder = Path(folder)
        config_file = folder / INDEX_CONFIG
        if not config_file.is_file():
            found = ", ".join(sorted(p.name for p in folder.iterdir())) if folder.is_dir() else "no such folder"
            raise ValueError(
                f"knowledge index {folder}: no {INDEX_CONFIG} (holds {found or 'nothing'}); expected a folder "
                "written by KnowledgeIndex.save (clip/, passages.jsonl, text.usearch, image.usearch ...)"
            )
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if config.get("format") != INDEX_FORMAT:
            raise ValueError(f"{config_file}: format {config.get('format')!r}; expected {INDEX_FORMAT!r}")
        passages = [
            Passage(**json.loads(line))
            for line in (folder / "passages.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        clip = CLIPModel.from_pretrained(folder / "clip", local_files_only=True, dtype=dtype).to(device).eval()
        processor = CLIPProcessor.from_pretrained(folder / "clip", local_files_only=True)
        index = cls.__new__(cls)
        index.clip, index.processor, index.device = clip, processor, torch.device(device)
        index.passages = passages
        index.text_embeddings = np.load(folder / "text_embeddings.npy")
        index.image_embeddings = np.load(folder / "image_embeddings.npy")
        index.image_rows = json.loads((folder / "image_rows.json").read_text(encoding="utf-8"))
        index._image_of = {row: i for i, row in enumerate(index.image_rows)}
        index.fusion = Fusion(**config.get("fusion", {}))
        index.text_index = Index.restore(str(folder / "text.usearch"))
        index.image_index = Index.restore(str(folder / "image.usearch"))
        if len(index.text_index) != len(passages):
            raise ValueError(
                f"knowledge index {folder}: text.usearch holds {len(index.text_index)} vectors for "
                f"{len(passages)} passages; rebuild it"
            )
        return index


__all__ = ["INDEX_CONFIG", "Fusion", "Hit", "KnowledgeIndex", "Passage", "knowledge_prompt"]
