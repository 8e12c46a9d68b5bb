"""python -m training rag --config training/recipes/rag/tiny.toml [--set key=value ...] [--fresh]

RS-RAG (Wen et al., 2025): a multimodal knowledge index, retrieval with re-ranking, knowledge-augmented
prompts for a VLM (rs_assistant/engine/models/rag). A run

1. builds the **knowledge index** of ``data_root``'s corpus (knowledge.jsonl: training/data/formats/
   knowledge.py) with a CLIP (``retriever_path``: the clip recipe's export, any transformers CLIP or an
   open_clip folder; empty: the tiny CLIP in ``work_dir``): passage texts and images embedded, stored in
   usearch indexes;
2. **retrieves** for every question of ``qa_<train_split>.json`` the ``top_k`` passages (its image and
   question as the query, first stage + re-ranking, ``fusion_*`` weights), once (the retriever is frozen);
3. **fine-tunes the VLM** (the RSA model: ``init_from`` an RSA checkpoint, or ``vision_path`` +
   ``lm_path`` parts; LoRA on the LLM, the bridge trained) on ``(image, knowledge prompt with the
   retrieved passages, question) -> answer`` as ``chat`` turns (rsa_base.py).

Evaluation (``metrics.json``): on ``qa_<eval_split>.json``, retrieval ``R@1``/``R@{top_k}`` of the gold
passages (``knowledge_ids``), with and without re-ranking (``first_stage_R@1``); answers generated from
the retrieved knowledge, scored by exact match (``accuracy``) and BLEU/ROUGE-L (``caption_metrics``,
pycocoevalcap, needs Java). The export is a folder the engine serves with
``backend = "rs_assistant.engine.backends.rag:RAGBackend"``: ``vlm/`` (an RSA checkpoint, LoRA merged),
``index/`` (the knowledge index with its CLIP) and ``rag_config.json``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rs_assistant.core.protocol import Task
from rs_assistant.engine.models.rag import Fusion, KnowledgeIndex, knowledge_prompt
from training.data.formats._common import open_image
from training.data.formats.knowledge import read_passages, read_qa
from training.eval.metrics import vqa_accuracy
from training.loop import Runtime, map_batches, unwrap
from training.recipes.rsa_base import RSARecipe, RSARecipeConfig, caption_metrics, generate, history_messages, rgb

log = logging.getLogger(__name__)

RAG_CONFIG = "rag_config.json"


@dataclass(frozen=True)
class RAGConfig(RSARecipeConfig):
    """The rag recipe's settings (tiny.toml, paper.toml); the RSA keys are rsa_base's."""

    data_root: str = ""  # knowledge.jsonl + images/ + qa_<split>.json
    retriever_path: str = (
        ""  # CLIP folder (transformers or open_clip); "" = vision_path's CLIP (tiny: built in work_dir)
    )
    train_split: str = "train"
    eval_split: str = "test"
    top_k: int = 3  # passages in the prompt
    candidates: int = 16  # first-stage candidates per route
    fusion_image_text: float = 0.4
    fusion_image_image: float = 0.4
    fusion_text_text: float = 0.2
    passage_chars: int = 300  # each passage is cut to this many characters in the prompt

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data_root:
            raise ValueError(
                "data_root is empty; give an RS-RAG folder (knowledge.jsonl, images/, qa_<split>.json), "
                "e.g. --set data_root=/data/RSWK"
            )
        if self.top_k < 1 or self.candidates < self.top_k:
            raise ValueError(f"top_k ({self.top_k}) must be positive and candidates ({self.candidates}) at least top_k")

    @property
    def fusion(self) -> Fusion:
        return Fusion(self.fusion_image_text, self.fusion_image_image, self.fusion_text_text)


class RAGRecipe(RSARecipe):
    name = "rag"
    run_keys = RSARecipe.run_keys + (
        "data_root",
        "retriever_path",
        "train_split",
        "top_k",
        "candidates",
        "fusion_image_text",
        "fusion_image_image",
        "fusion_text_text",
        "passage_chars",
        "max_length",
    )
    config: RAGConfig

    def __init__(self, config: RAGConfig) -> None:
        super().__init__(config)
        # Read the data now: a wrong folder or a missing split fails before any model is built.
        self.passages = read_passages(config.data_root)
        self.qa_train = read_qa(config.data_root, config.train_split, {p.id for p in self.passages})
        if not self.qa_train:
            raise ValueError(f"{config.data_root}/qa_{config.train_split}.json holds no question")

    def build_index(self, runtime: Runtime) -> KnowledgeIndex:
        from transformers import CLIPProcessor

        from training.recipes.clip.model import load_clip

        path = Path(self.config.retriever_path) if self.config.retriever_path else self.parts()[0]
        clip = load_clip(path)
        processor = CLIPProcessor(image_processor=clip.image_processor, tokenizer=clip.tokenizer)
        return KnowledgeIndex.build(
            clip.model, processor, self.passages, open_image, self.config.fusion, runtime.device
        )

    def build(self, runtime: Runtime):
        module = super().build(runtime)
        c = self.config
        self.index = self.build_index(runtime)
        by_id = {p.id: p for p in self.passages}
        self.prompts = []
        for qa in self.qa_train:
            hits = self.index.search(qa.sample.images()[0], qa.question, c.top_k, c.candidates)
            self.prompts.append(knowledge_prompt([by_id[h.id] for h in hits], qa.question, c.passage_chars))
        log.info("rag: %d passages indexed, %d training questions", len(self.passages), len(self.qa_train))
        return module

    def batches(self, start_step: int, runtime: Runtime) -> Iterator[dict[str, Any]]:
        qa, prompts, processor = self.qa_train, self.prompts, self.processor

        def collate(indices: list[int], step: int) -> dict:
            texts = [
                processor.format_prompt(Task.CHAT, prompts[i], history_messages(qa[i].history), answer=qa[i].answer)
                for i in indices
            ]
            return self.encode(texts, [rgb(qa[i].sample.images()[0]) for i in indices])

        return map_batches(self.config, start_step, runtime, len(qa), collate)

    # --- evaluation --------------------------------------------------------------------------------

    def evaluate(self, model, runtime: Runtime) -> dict[str, float]:
        c, processor = self.config, self.processor
        rsa = unwrap(model).model
        samples = read_qa(c.data_root, c.eval_split, {p.id for p in self.passages})
        samples = samples[: c.eval_count] if c.eval_count else samples
        by_id = {p.id: p for p in self.passages}
        metrics: dict[str, float] = {}
        gold = [qa for qa in samples if qa.knowledge_ids]
        if gold:
            for rerank, prefix in ((True, ""), (False, "first_stage_")):
                ranked = [
                    [h.id for h in self.index.search(qa.sample.images()[0], qa.question, c.top_k, c.candidates, rerank)]
                    for qa in gold
                ]
                for k in sorted({1, c.top_k}):
                    metrics[f"{prefix}R@{k}"] = sum(
                        bool(set(r[:k]) & set(qa.knowledge_ids)) for r, qa in zip(ranked, gold)
                    ) / len(gold)
        predictions, self.examples = [], {}
        for start in range(0, len(samples), c.eval_batch_size):
            part = samples[start : start + c.eval_batch_size]
            texts, images = [], []
            for qa in part:
                hits = self.index.search(qa.sample.images()[0], qa.question, c.top_k, c.candidates)
                texts.append(
                    processor.format_prompt(
                        Task.CHAT,
                        knowledge_prompt([by_id[h.id] for h in hits], qa.question, c.passage_chars),
                        history_messages(qa.history),
                    )
                )
                images.append(rgb(qa.sample.images()[0]))
            output, _ = generate(rsa, processor, texts, images, c.eval_max_new_tokens, runtime.device)
            for row, qa in zip(output.sequences.tolist(), part):
                predictions.append(processor.parse_answer(row, (1, 1)).text)
                if len(self.examples) < 20:
                    self.examples[f"{qa.sample.id}: {qa.question}"] = predictions[-1]
        if samples:
            metrics["accuracy"] = vqa_accuracy(predictions, [qa.answer for qa in samples])["accuracy"]
            metrics.update(
                caption_metrics(
                    {str(i): [qa.answer] for i, qa in enumerate(samples)},
                    {str(i): p for i, p in enumerate(predictions)},
                    names=c.caption_metrics,
                )
            )
        return metrics

    # --- export ------------------------------------------------------------------------------------

    def export(self, model, out: Path) -> Path:
        c = self.config
        super().export(model, out / "vlm")
        self.index.save(out / "index")
        (out / RAG_CONFIG).write_text(
            json.dumps(
                {
                    "model_type": "rs_rag",
                    "vlm": "vlm",
                    "index": "index",
                    "top_k": c.top_k,
                    "candidates": c.candidates,
                    "passage_chars": c.passage_chars,
                },
                indent=1,
            )
            + "\n",
            encoding="utf-8",
        )
        return out


def run(config: dict[str, Any], fresh: bool, stop=None):
    """The command line's entry: config dict -> a finished (or stopped) run."""
    from training.loop import train

    return train(RAGRecipe(RAGConfig.from_dict(config)), fresh=fresh, stop=stop)
