"""RS-CapRet backend: ``caption``, ``chat`` (interleaved images and dialogue) and ``retrieve`` ([RET]).

Models file (the folder ``python -m training capret`` exports)::

    [models.capret]
    backend = "capret"      # or "rs_assistant.engine.backends.capret:CapRetBackend"
    path = "/models/rs-capret"

- ``caption``: the image, then greedy decoding until EOS (``options.max_new_tokens``).
- ``chat``: the history and the prompt as a dialogue (``User:``/``Assistant:`` turns) with the
  request's images at the start of the last user turn.
- ``retrieve``: the prompt followed by ``[RET]``; its retrieval embedding ranks the request's
  images (their CLIP embeddings through the image map), one box feature per image returned with
  ``rank``, ``image`` and ``similarity``, as the clip backend does.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import torch

from rs_assistant.core.protocol import ErrorCode, FeatureKind, ProtocolError, Task
from rs_assistant.engine.backends.base import Backend, BackendCall, BackendResult, Detection
from rs_assistant.engine.backends.hf import load_failed
from rs_assistant.engine.device import torch_dtype

log = logging.getLogger(__name__)


class CapRetBackend(Backend):
    name = "capret"
    tasks = frozenset({Task.CAPTION, Task.CHAT, Task.RETRIEVE})

    def load(self) -> None:
        from rs_assistant.engine.models.capret import CapRetForCausalLM, CapRetProcessor

        path = self.local_path(required_files=("config.json",))
        try:
            model_type = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError) as exc:
            raise ProtocolError(
                ErrorCode.MODEL_LOAD_FAILED, f"model '{self.model_name}': {path / 'config.json'} is unreadable: {exc}"
            ) from None
        if model_type != "capret":
            raise ProtocolError(
                ErrorCode.MODEL_LOAD_FAILED,
                f"model '{self.model_name}': checkpoint folder {path} holds a {model_type or 'unknown'} checkpoint "
                "(config.json model_type); backend 'capret' needs capret (exported by python -m training capret)",
            )
        try:
            self.model = CapRetForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch_dtype(self.device))
            self.processor = CapRetProcessor.from_pretrained(path, self.model.config.num_visual_tokens)
        except Exception as exc:  # transformers raises many types; all mean the same to the caller
            raise load_failed(self, path, exc) from exc
        self.model.to(self.device).eval()
        log.info("loaded RS-CapRet '%s' from %s on %s", self.model_name, path, self.device)

    def run(self, call: BackendCall) -> BackendResult:
        self.check_task(call.task)
        self.ensure_loaded()
        if call.task is Task.RETRIEVE:
            return self._retrieve(call)
        if call.task is Task.CAPTION:
            items = [call.images[0]]
        else:
            messages = [
                {"role": m.role.value if hasattr(m.role, "value") else str(m.role), "content": m.content}
                for m in call.history
            ]
            content = [{"type": "image"} for _ in call.images] + [{"type": "text", "text": call.prompt}]
            messages.append({"role": "user", "content": content})
            items = self.processor.dialogue(messages, list(call.images))
        return BackendResult(text=self._generate(items, call))

    def _generate(self, items: list, call: BackendCall) -> str:
        ids, images = self.processor.encode(items)
        pixels = self.processor.pixel_values(images).to(self.device) if images else None
        stop = (self.processor.tokenizer.eos_token_id, self.processor.ret_token_id)
        produced = self.model.generate_text(
            torch.tensor([ids], device=self.device),
            pixels,
            max_new_tokens=call.options.max_new_tokens,
            stop_ids=stop,
            should_stop=call.cancel.is_set,
        )
        if call.cancel.is_set():
            raise ProtocolError(ErrorCode.CANCELLED, "the request was cancelled")
        return self.processor.tokenizer.decode(produced, skip_special_tokens=True).strip()

    def _retrieve(self, call: BackendCall) -> BackendResult:
        query = call.prompt.strip()
        if not query:
            raise ProtocolError(ErrorCode.INVALID_VALUE, "retrieve needs a text prompt describing what to look for")
        ids, labels = self.processor.retrieval_example(query)
        batch = self.processor.pad([ids])
        with torch.inference_mode():
            out = self.model(
                input_ids=batch["input_ids"].to(self.device), attention_mask=batch["attention_mask"].to(self.device)
            )
            text = self.model.text_retrieval_embeddings(out.hidden_states, batch["input_ids"].to(self.device))[0]
            pixels = self.processor.pixel_values(list(call.images)).to(self.device)
            images = self.model.image_retrieval_embeddings(self.model.image_embeddings(pixels))
            similarity = (images @ text).float().cpu().numpy()
            scale = float(self.model.bridge.logit_scale.detach().float().exp())
        scores = np.exp(scale * (similarity - similarity.max()))
        scores /= scores.sum()
        order = np.argsort(-similarity, kind="stable")[: call.options.top_k]
        detections, lines = [], []
        for rank, index in enumerate(order.tolist(), start=1):
            height, width = call.images[index].shape[:2]
            sim = float(similarity[index])
            detections.append(
                Detection(
                    kind=FeatureKind.BOX,
                    label=query,
                    score=float(scores[index]),
                    box=(0.0, 0.0, float(width), float(height)),
                    properties={"rank": rank, "image": index, "similarity": sim},
                )
            )
            lines.append(f"{rank}. image {index}: similarity {sim:.3f}, score {scores[index]:.3f}")
        return BackendResult(text="\n".join(lines), detections=detections)
