"""RS-RAG backend: ``chat`` and ``caption`` answered from retrieved knowledge.

Models file (the folder ``python -m training rag`` exports)::

    [models.rs-rag]
    backend = "rs_assistant.engine.backends.rag:RAGBackend"
    path = "/models/rs-rag"      # rag_config.json, vlm/ (an RSA checkpoint), index/ (the knowledge index)
    top_k = 3                    # optional: passages in the prompt (default: rag_config.json's)

For each request the window (and the question, for ``chat``) queries the knowledge index (first stage
+ re-ranking, rs_assistant/engine/models/rag); the ``top_k`` passages go into the knowledge-augmented
prompt, which the RSA VLM in ``vlm/`` answers as a ``chat`` turn (the RSA backend does the generation).
A ``caption`` is the question "Describe the image." with the same knowledge. The answer text ends with
the retrieved passages' ids and titles, ``Sources: [P001] Title; [P002] Title``, most relevant first.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace

from rs_assistant.core.protocol import ErrorCode, ProtocolError, Task
from rs_assistant.engine.backends.base import Backend, BackendCall, BackendResult
from rs_assistant.engine.device import torch_dtype

log = logging.getLogger(__name__)

RAG_CONFIG = "rag_config.json"
CAPTION_QUESTION = "Describe the image."


class RAGBackend(Backend):
    name = "rag"
    tasks = frozenset({Task.CAPTION, Task.CHAT})
    samples = True  # the RSA VLM decodes the call as it comes (its decoding, stop strings and streamed text)

    def load(self) -> None:
        from rs_assistant.engine.backends.rsa import RSABackend
        from rs_assistant.engine.models.rag import KnowledgeIndex

        path = self.local_path(required_files=(RAG_CONFIG,))
        where = f"model '{self.model_name}': checkpoint folder {path}"
        try:
            config = json.loads((path / RAG_CONFIG).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED, f"{where}: {RAG_CONFIG} is unreadable: {exc}") from None
        if not isinstance(config, dict) or config.get("model_type") != "rs_rag":
            found = config.get("model_type") if isinstance(config, dict) else type(config).__name__
            raise ProtocolError(
                ErrorCode.MODEL_LOAD_FAILED,
                f"{where}: {RAG_CONFIG} names a {found!r} model; backend "
                "'rag' needs rs_rag (exported by python -m training rag)",
            )
        self.top_k = int(self.config.get("top_k", config.get("top_k", 3)))
        self.candidates = max(int(config.get("candidates", 16)), self.top_k)
        self.passage_chars = int(config.get("passage_chars", 300))
        try:
            self.index = KnowledgeIndex.load(path / config.get("index", "index"), self.device, torch_dtype(self.device))
        except Exception as exc:  # noqa: BLE001 - a missing or corrupt index: name it
            raise ProtocolError(
                ErrorCode.MODEL_LOAD_FAILED, f"{where}: the knowledge index does not load: {type(exc).__name__}: {exc}"
            ) from None
        self.vlm = RSABackend(self.model_name, {"path": str(path / config.get("vlm", "vlm"))}, self.device)
        self.vlm.ensure_loaded()
        log.info(
            "loaded RS-RAG '%s' from %s: %d passages, top %d",
            self.model_name,
            path,
            len(self.index.passages),
            self.top_k,
        )

    def run(self, call: BackendCall) -> BackendResult:
        from rs_assistant.engine.models.rag import knowledge_prompt

        self.check_task(call.task)
        self.ensure_loaded()
        question = CAPTION_QUESTION if call.task is Task.CAPTION else call.prompt.strip()
        if not question:
            raise ProtocolError(ErrorCode.INVALID_VALUE, f"model '{self.model_name}': chat needs a question")
        hits = self.index.search(call.images[0], question, self.top_k, self.candidates)
        passages = [self.index.passages[h.row] for h in hits]
        prompt = knowledge_prompt(passages, question, self.passage_chars)
        history = call.history if call.task is Task.CHAT else ()
        result = self.vlm.run(replace(call, task=Task.CHAT, prompt=prompt, history=history))
        sources = "; ".join(f"[{p.id}] {p.title}".rstrip() for p in passages)
        return replace(result, text=f"{result.text}\n\nSources: {sources}")  # its token counts and finish too
