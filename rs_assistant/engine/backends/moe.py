"""RS-MoE backend: ``caption`` and ``chat`` (VQA) from the instruction router and its LLM experts.

Models file (the folder ``python -m training moe`` exports)::

    [models.rs-moe]
    backend = "rs_assistant.engine.backends.moe:MoEBackend"
    path = "/models/rs-moe"
    compose = "top1"        # optional: top1 | concat (default: the checkpoint's config)

- ``caption``: the instruction "Describe the image."; the router weighs the experts and writes their
  sub-task prompts; with ``compose = "top1"`` the most weighted expert answers, with ``"concat"`` the
  ``top_k`` most weighted experts each write their part, joined in expert order.
- ``chat``: the history as ``User:``/``Assistant:`` turns, the prompt as the instruction (RSVQA-style
  questions as trained).
"""

from __future__ import annotations

import logging

import torch

from rs_assistant.core.protocol import ErrorCode, ProtocolError, Role, Task
from rs_assistant.engine.backends.base import Backend, BackendCall, BackendResult
from rs_assistant.engine.backends.hf import cancelled, checkpoint_folder, load_failed
from rs_assistant.engine.device import torch_dtype

log = logging.getLogger(__name__)


class MoEBackend(Backend):
    name = "moe"
    tasks = frozenset({Task.CAPTION, Task.CHAT})

    def load(self) -> None:
        from rs_assistant.engine.models.moe import MoEForConditionalGeneration, MoEProcessor
        from rs_assistant.engine.models.moe.configuration_moe import COMPOSE

        path = checkpoint_folder(self, {"rs_moe"}, processor_files=("preprocessor_config.json",))
        compose = self.config.get("compose")
        if compose is not None and compose not in COMPOSE:
            raise ProtocolError(
                ErrorCode.MODEL_LOAD_FAILED,
                f"model '{self.model_name}': compose = {compose!r}; expected one of {', '.join(COMPOSE)}",
            )
        try:
            self.model = MoEForConditionalGeneration.from_pretrained(
                path, local_files_only=True, dtype=torch_dtype(self.device)
            )
            self.processor = MoEProcessor.from_pretrained(path)
        except Exception as exc:  # transformers raises many types; all mean the same to the caller
            raise load_failed(self, path, exc) from exc
        self.compose = compose or self.model.config.compose
        self.model.to(self.device).eval()
        log.info(
            "loaded RS-MoE '%s' (%d experts: %s) from %s on %s",
            self.model_name,
            len(self.model.experts),
            ", ".join(self.model.config.expert_names),
            path,
            self.device,
        )

    def run(self, call: BackendCall) -> BackendResult:
        from rs_assistant.engine.models.moe import CAPTION_INSTRUCTION

        self.check_task(call.task)
        self.ensure_loaded()
        if call.task is Task.CAPTION:
            instruction, history = CAPTION_INSTRUCTION, []
        else:
            instruction = call.prompt.strip()
            if not instruction:
                raise ProtocolError(ErrorCode.INVALID_VALUE, f"model '{self.model_name}': chat needs a question")
            history, question = [], None
            for message in call.history:
                if message.role is Role.USER:
                    question = message.content
                elif message.role is Role.ASSISTANT and question is not None:
                    history.append((question, message.content))
                    question = None
        batch = self.processor.generation_batch([instruction], [history])
        batch = {k: v.to(self.device) for k, v in batch.items()}
        pixels = self.processor.pixel_values([call.images[0]]).to(self.device, self.model.dtype)
        with torch.inference_mode():
            answers, weights, parts = self.model.answer(
                pixels,
                batch["input_ids"],
                batch["attention_mask"],
                batch["router_ids"],
                batch["router_mask"],
                call.options.max_new_tokens,
                self.processor.eos_token_id,
                self.processor.decode,
                compose=self.compose,
                should_stop=call.cancel.is_set,
            )
        if call.cancel.is_set():
            raise cancelled(self)
        names = self.model.config.expert_names
        log.debug(
            "model '%s': routing %s; answered by %s",
            self.model_name,
            {n: round(float(w), 3) for n, w in zip(names, weights[0])},
            [names[k] for k in parts[0]],
        )
        return BackendResult(text=answers[0])
