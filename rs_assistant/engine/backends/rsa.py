"""The project's own RSA model (rs_assistant.engine.models.rsa): caption, ground, segment, change, chat.

Models file (``default`` needs none: it reads resources/models/rsa-default)::

    [models.rsa-large]
    backend = "rsa"
    path = "/models/rsa-large"   # config.json, model.safetensors, tokenizer.json, processor_config.json

One generation per request, greedy (a chat may be sampled: its ``call.decoding``), stopped by the
request's cancel event at the next token, or by a stop string of its ``call.watch``, which also
receives the answer's text after every token when it is streamed (decoding.py). A chat without image
is answered by the language model alone, in text. Results carry their token counts and whether the
length limit cut them. The answer is read by RSAProcessor.parse_answer (the formats are documented
in processing_rsa.py):

- location tokens -> box detections in window pixels. The model sees the window resized to a
  square, so bins are fractions of each side of the window, whatever its aspect ratio. A box's
  score is the probability mass the model put within one bin of each coordinate it wrote
  (the mean over its four location tokens). A model with ``box_from_mask`` also decodes the
  hidden state that wrote each box's first location token into a mask, and the box is the
  extent of that mask's most probable connected region (above ``box_mask_threshold``; score:
  its mean probability); the four bins remain the box when that region is empty;
- each ``[SEG]`` -> its hidden state through the mask decoder -> logits resized to the window
  -> a boolean mask detection (score: the mean probability inside the mask). With the
  checkpoint's ``class_aware_masks`` (a model with a per-pixel class head), a mask named by a
  class's own name is that class's pixels in the head's class map (score: their mean class
  probability), and one named by another noun of a class keeps only its pixels of that class
  (with ``class_region_masks``: becomes the connected region of that class it overlaps best);
  with ``class_aware_boxes``, a box whose label names a class becomes the extent of the connected
  region of that class in the head's map whose extent overlaps it best (when one does). A model
  with a region selector (``region_selector_dim``, regions.py) chooses the region itself for an
  answer that names one object: the grounding answer's only box, or a segment answer's only
  ``[SEG]`` named by another noun of a class, becomes the region it scores highest for the
  expression (the hidden state that wrote the box or [SEG] and the mean state of the user's turn).
  The head's map at the window's size is its logits upsampled, or with a class refiner
  (``class_refine_channels``) the refiner's sharper map from those logits and the window's colours;
  the regions the selector scores stay those of the head's own cells;
- change: the caption, prefixed with the changed/unchanged head's verdict ("changed (93%): ...";
  changed from the config's ``change_threshold`` on, 0.5 unless calibrated); when changed, the
  ``[SEG]`` masks (over the difference features) become ``change`` detections scored by the head.
  For a model trained so that ``[SEG]`` ends a change caption exactly when the pair changed
  (``change_seg_marks_changed``, the default recipe), a caption that contradicts the verdict is decoded
  again by beam search, keeping the best candidate that agrees; with none, only the verdict is
  given, and a changed one takes its mask from the per-pixel change head when there is one.

Captions are greedy unless the checkpoint's config asks for beam search (``caption_num_beams``,
``caption_length_penalty``; calibrated on the validation split's CIDEr). Only chat reads the
conversation history; the other tasks are single turns, as trained.

Bad input: a missing or incomplete folder, a config.json that does not match the weights, a
corrupt weights file, or a tokenizer/processor that does not fit the model each raise
MODEL_LOAD_FAILED naming the folder; a prompt (with history and images) that leaves the model's
context no room for an answer raises PROMPT_TOO_LONG, found without tokenizing more of the history
than the context holds (RSAProcessor.prompt_ids). The engine keeps serving other requests in each case.

The class map, its regions and a mask's box are read in rsa_regions.py.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from transformers import LogitsProcessorList, StoppingCriteriaList
from transformers.generation.utils import GenerateDecoderOnlyOutput

from rs_assistant.core.protocol import LAND_COVER_SHARE, ErrorCode, FeatureKind, ProtocolError, Task
from rs_assistant.engine.backends import boxes, rsa_changes, rsa_instances, rsa_objects, rsa_scale
from rs_assistant.engine.backends.base import MIN_PART_PIXELS, Backend, BackendCall, BackendResult, Detection
from rs_assistant.engine.backends.hf import (
    CancelCriteria,
    WatchCriteria,
    cancelled,
    checkpoint_folder,
    finish_reason,
    load_failed,
    sampler,
    written_tokens,
)
from rs_assistant.engine.backends.rsa_regions import ClassRegions, land_cover, region_box
from rs_assistant.engine.device import attn_implementation, torch_dtype
from rs_assistant.engine.models.rsa.modeling_rsa import RSAForConditionalGeneration, RSAInstruction, RSAVisualFeatures
from rs_assistant.engine.models.rsa.processing_rsa import (
    DELTA,
    EOS,
    IMAGE,
    PROCESSOR_FILE,
    SEG,
    Answer,
    LocatedPhrase,
    PromptTooLong,
    RSAProcessor,
    SegRequest,
)
from rs_assistant.engine.models.rsa.regions import connected_regions as connected_regions  # re-exported: tests use it

log = logging.getLogger(__name__)

#: Windows per forward pass when embedding or scoring a layer's tiles for a search.
SEARCH_BATCH = 16


class RSABackend(Backend):
    name: ClassVar[str] = "rsa"
    tasks: ClassVar[frozenset[Task]] = frozenset({Task.CAPTION, Task.GROUND, Task.SEGMENT, Task.CHANGE, Task.CHAT})
    chat_without_images: ClassVar[bool] = True
    samples: ClassVar[bool] = True
    # A small model: one generation step costs about the same for 16 tiles as for 4 (benchmarks/large_area.py).
    TILE_BATCH_SIZE: ClassVar[int] = 16

    def load(self) -> None:
        path = checkpoint_folder(self, {"rsa"}, processor_files=(PROCESSOR_FILE,))
        try:
            processor = RSAProcessor.from_pretrained(path)
            model, info = RSAForConditionalGeneration.from_pretrained(
                path,
                local_files_only=True,
                dtype=torch_dtype(self.device),
                attn_implementation=attn_implementation(self.device),
                output_loading_info=True,
                ignore_mismatched_sizes=True,  # reported below, with the other differences, as one clear error
            )
        except Exception as exc:  # transformers, safetensors and tokenizers raise many types; all mean the same here
            raise load_failed(self, path, exc) from exc
        where = f"model '{self.model_name}': checkpoint folder {path}"
        problems = []
        if info.get("missing_keys"):
            problems.append(f"weights missing from the file: {_names(info['missing_keys'])}")
        if info.get("unexpected_keys"):
            problems.append(f"weights the config has no place for: {_names(info['unexpected_keys'])}")
        if info.get("mismatched_keys"):
            shapes = [
                f"{key} {tuple(saved)} in the file, {tuple(wanted)} by the config"
                for key, saved, wanted in info["mismatched_keys"]
            ]
            problems.append(f"shape mismatch: {_names(shapes)}")
        if problems:
            raise ProtocolError(
                ErrorCode.MODEL_LOAD_FAILED, f"{where}: config.json does not match the weights ({'; '.join(problems)})"
            )
        self._check_fit(processor, model, where)
        self.processor = processor
        self.model = model.to(self.device).eval()
        self.context = int(model.config.text_config.max_position_embeddings)
        log.info("model '%s': loaded RSA from %s on %s", self.model_name, path, self.device)

    @staticmethod
    def _check_fit(processor: RSAProcessor, model: RSAForConditionalGeneration, where: str) -> None:
        """The tokenizer and processor settings must be the ones the model was built with."""
        config = model.config
        expected = {
            "image size": (processor.image_size, config.vision_config.image_size),
            "image tokens": (processor.num_image_tokens, config.num_image_tokens),
            "location bins": (processor.num_location_bins, config.num_location_bins),
            f"{IMAGE} id": (processor.token_ids[IMAGE], config.image_token_id),
            f"{DELTA} id": (processor.token_ids[DELTA], config.delta_token_id),
            f"{SEG} id": (processor.token_ids[SEG], config.seg_token_id),
        }
        wrong = [f"{name} {got} (model: {want})" for name, (got, want) in expected.items() if got != want]
        if len(processor.tokenizer) > config.text_config.vocab_size:
            wrong.append(f"vocabulary {len(processor.tokenizer)} (model: {config.text_config.vocab_size})")
        if wrong:
            raise ProtocolError(
                ErrorCode.MODEL_LOAD_FAILED,
                f"{where}: the tokenizer/processor files do not fit the model: {', '.join(wrong)}",
            )

    def run(self, call: BackendCall) -> BackendResult:
        return self.run_batch([call])[0]

    def run_batch(self, calls: Sequence[BackendCall]) -> list[BackendResult]:
        """Calls with the same task, prompt and image count run as one batch: one vision-encoder pass and one
        batched greedy generation (every prompt of a group has the same length, so nothing is padded),
        then one mask-decoder pass for every [SEG] of the group."""
        self.ensure_loaded()
        groups: dict[tuple, list[int]] = {}
        results: list[BackendResult] = [BackendResult()] * len(calls)
        fed = list(calls)  # each call as the model is fed it: a window finer than it was trained on, placed
        placements: list[rsa_scale.Placement | None] = [None] * len(calls)
        for index, call in enumerate(calls):
            self.check_task(call.task)
            answered = self._every_object(call)
            if answered is not None:
                results[index] = answered
                continue
            placements[index] = self._placement(call)
            if placements[index] is not None:
                fed[index] = self._placed_call(call, placements[index])
            history = tuple(call.history) if call.task is Task.CHAT else ()
            watched = call.watch if call.watch.wants_updates else None  # a watched answer is generated alone
            key = (
                call.task,
                len(call.images),
                call.prompt,
                history,
                call.options.max_new_tokens,
                call.decoding,
                watched,
            )
            groups.setdefault(key, []).append(index)
        for indices in groups.values():
            answered = self._run_group([fed[i] for i in indices], [placements[i] for i in indices])
            for index, result in zip(indices, answered):
                placement = placements[index]
                results[index] = result if placement is None else self._unplaced(calls[index], placement, result)
        for index, call in enumerate(calls):
            if call.task is Task.CAPTION and call.land_cover:
                results[index] = replace(results[index], land_cover=self._land_cover(call))
        return results

    def _land_cover(self, call: BackendCall) -> tuple[tuple[str, float], ...] | None:
        """What covers a caption's window, from the class map of the whole window read as one crop (measured
        against crops of a ground size on 20 test scenes: the main covers named alike, 1.000 against 0.988, at a
        quarter of the time); None for a model without a class map."""
        config = self.model.config
        if not config.class_aware_masks or not config.class_names:
            return None
        probabilities = self._crop_probabilities([call.images[0]], call.cancel)[0]
        return land_cover(probabilities, list(config.class_names), LAND_COVER_SHARE)

    # --- the scale the model was trained at (rsa_scale) ---------------------------------------------

    @property
    def trained_scale(self) -> tuple[float, float] | None:
        """The config's ``trained_input_pixel_m`` (metres per model-input pixel, low and high), None without it."""
        scale = getattr(self.model.config, "trained_input_pixel_m", None)
        return None if scale is None else (float(scale[0]), float(scale[1]))

    def _placement(self, call: BackendCall) -> rsa_scale.Placement | None:
        """Where the call's window goes on the model's input when it is finer than the model was trained on (None:
        fed as read, as it is when its pixel size or the model's trained scale is unknown)."""
        if not call.images:
            return None
        shape = call.images[0].shape[:2]
        side = self.processor.image_size
        if rsa_scale.coarser(shape, call.pixel_size_m, self.trained_scale, side):
            log.debug(
                "model '%s': a %d x %d window at %.2f m is coarser than the %.2f m per input pixel it was trained "
                "at; fed as read", self.model_name, shape[1], shape[0], call.pixel_size_m, self.trained_scale[1],
            )  # fmt: skip
        if not rsa_scale.PLACE_FINE_WINDOWS:  # measured worse than feeding it as read (rsa_scale)
            return None
        return rsa_scale.fit(shape, call.pixel_size_m, self.trained_scale, side)

    @staticmethod
    def _placed_call(call: BackendCall, placement: rsa_scale.Placement) -> BackendCall:
        """The call with its windows drawn on the placement's canvas (and the canvas's pixel size)."""
        assert call.pixel_size_m is not None
        scale = min(placement.scale)
        return replace(call, images=[placement.image(i) for i in call.images], pixel_size_m=call.pixel_size_m / scale)

    def _unplaced(self, call: BackendCall, placement: rsa_scale.Placement, result: BackendResult) -> BackendResult:
        """A result on the canvas -> the window's pixels: boxes and masks mapped back and clipped to the window,
        those wholly outside it dropped; the fed scale reported."""
        detections = []
        for d in result.detections:
            mask = None if d.mask is None else placement.mask(d.mask)
            if mask is not None:
                if not mask.any():
                    continue
                rows, cols = np.nonzero(mask)
                box = (float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))
            else:
                box = None if d.box is None else placement.box(d.box)
            point = None if d.point is None else placement.point(d.point)
            if box is None and mask is None and point is None:
                continue
            detections.append(replace(d, box=box if d.box is not None or mask is not None else None, mask=mask,
                                      point=point))  # fmt: skip
        text = _summary(detections) if call.task in (Task.GROUND, Task.SEGMENT) else result.text
        assert call.pixel_size_m is not None
        fed = rsa_scale.fed_pixel_m(placement, call.pixel_size_m, self.processor.image_size)
        return replace(result, text=text, detections=detections, model_pixel_size_m=fed)

    def _class_maps(
        self, image: np.ndarray, name: str, pixel_size_m: float | None, cancel: threading.Event
    ) -> tuple[torch.Tensor, float | None]:
        """``([classes, H, W], metres per input pixel or None)``: the class probabilities of ``image`` read in crops
        for class ``name`` (rsa_instances): of a ground size when the window's pixel size and the model's trained
        scale are known and the window is finer than the crops were tuned at (rsa_instances.ground_crop_side; the
        fed scale reported), else of CROP_SIDE pixels as before (None reported)."""

        def read(crops: list[np.ndarray]) -> list[torch.Tensor]:
            return self._crop_probabilities(crops, cancel)

        side_m = None
        if pixel_size_m is not None and self.trained_scale is not None:
            side_m = rsa_instances.ground_crop_side(name, pixel_size_m)
        if side_m is None or pixel_size_m is None:
            return rsa_instances.class_probabilities(image, rsa_instances.CROP_SIDE[name], read), None
        fed = rsa_instances.fed_pixel_m(image.shape[:2], side_m, pixel_size_m, self.processor.image_size)
        return rsa_instances.class_probabilities_at(image, side_m, pixel_size_m, read), fed

    def _every_object(self, call: BackendCall) -> BackendResult | None:
        """The answer to a class-level request, read off the class head's map (rsa_instances): "find the buildings"
        and "segment all trees" give one box or mask per object, "how many cars are there?" the count of the
        objects it draws, and a short noun of no class the model knows says which classes it knows. None for any
        other request (a referring expression, a class of areas such as fields, a model without a class head). A
        class's pixels are those where it is the most probable class, or reaches its ``class_mask_bars``; objects
        scored under the class's ``count_bars`` are left out. The classes of the config's ``object_served`` are read
        by the object detector instead, those of ``object_joined`` by both (rsa_objects.join)."""
        config = self.model.config
        if call.task not in (Task.GROUND, Task.SEGMENT, Task.CHAT) or len(call.images) != 1:
            return None
        if not config.class_aware_masks or not config.class_names:
            return None
        counting = call.task is Task.CHAT
        if counting and not rsa_instances.is_count_question(call.prompt):
            return None
        phrase = call.prompt if counting else boxes.target_phrase(call.prompt)
        request = rsa_instances.class_request(phrase, config.class_names, config.class_nouns)
        if request is None:
            noun = rsa_instances.unknown_noun(phrase)
            if not rsa_instances.asks_for_a_class(noun):  # "the thing", "the red roof by the road": the model reads it
                return None
            return BackendResult(text=rsa_instances.unknown_class_text(noun, config.class_names))
        name = str(config.class_names[request.cls])
        if not request.every or name not in rsa_instances.CROP_SIDE:
            return None
        least = float((config.count_bars or {}).get(name, 0.0))  # weaker ones are noise (calibrated for counts)
        detector = self.model.object_detector is not None
        if detector and name in (config.object_served or ()):
            found, fed = self._detected(call, name)
        else:
            probabilities, fed = self._class_maps(call.images[0], name, call.pixel_size_m, call.cancel)
            found = rsa_instances.instances(probabilities, request.cls, (config.class_mask_bars or {}).get(name))
        found = [i for i in found if i.score >= least]
        if detector and name in (config.object_joined or ()):  # one view, masks only where the map has none
            free = rsa_objects.owners(found, call.images[0].shape[:2]) < 0
            detected, _ = self._detected(call, name, views=1, mask_where=free, mask_from=rsa_objects.ADD)
            found = rsa_objects.join(found, detected)
        shown = [i for i in found if i.score >= call.options.score_threshold]
        capped = len(shown) > rsa_instances.MAX_OBJECTS  # more to draw than one answer draws: a lower bound
        held = [i for i in found if i.score < call.options.score_threshold]
        found = (shown + held)[: rsa_instances.MAX_OBJECTS]
        single = rsa_instances.singular(name)
        kind = FeatureKind.MASK if call.task is Task.SEGMENT else FeatureKind.BOX
        detections = [
            Detection(kind, single, i.score, box=i.box, mask=i.mask if kind is FeatureKind.MASK else None,
                      one_object=True)
            for i in found
        ]  # fmt: skip
        drawn = sum(d.score >= call.options.score_threshold for d in detections)  # the count is of what is drawn
        if counting:
            text = rsa_instances.count_text(drawn, capped)
        else:
            text = rsa_instances.found_text(drawn, single, name, capped)
        return BackendResult(text=text, detections=detections, model_pixel_size_m=fed)

    def _detected(
        self,
        call: BackendCall,
        name: str,
        views: int | None = None,
        mask_where: np.ndarray | None = None,
        mask_from: float = 0.0,
    ) -> tuple[list[rsa_instances.Instance], float | None]:
        """The objects of class ``name`` the object detector finds in the call's window (rsa_objects.find_objects,
        with its ``views``, ``mask_where`` and ``mask_from``; masks only for a segment request), and the metres per
        pixel it read the window at when it resized it (else None)."""
        config = self.model.config
        if call.cancel.is_set():
            raise cancelled(self)
        image = call.images[0]
        found, scale = rsa_objects.find_objects(
            self.model.object_detector,
            image,
            list(config.object_classes).index(name),
            call.pixel_size_m,
            config.object_min_pixel_m,
            config.object_max_pixel_m,
            self.device,
            masks=call.task is Task.SEGMENT,
            views=views,
            mask_where=mask_where,
            mask_from=mask_from,
        )
        fed = call.pixel_size_m / scale if call.pixel_size_m is not None and scale != 1 else None
        return found, fed

    def _crop_probabilities(self, crops: Sequence[np.ndarray], cancel: threading.Event) -> list[torch.Tensor]:
        """Each crop's class probabilities ``[classes, h, w]``, the crops read as windows of their own (one encoder
        pass per batch of crops, then ClassRegions.probabilities for each)."""
        out = []
        for start in range(0, len(crops), SEARCH_BATCH):
            if cancel.is_set():
                raise cancelled(self)
            part = list(crops[start : start + SEARCH_BATCH])
            with torch.inference_mode():
                visual = self.model.encode_images(self.processor.pixel_values(part).to(self.device, self.model.dtype))
                out += [ClassRegions(self.model, visual, i, crop.shape[:2], crop).probabilities() for i, crop in
                        enumerate(part)]  # fmt: skip
        return out

    def _prompt_ids(self, call: BackendCall) -> list[int]:
        """The call's prompt as ids, refused (PROMPT_TOO_LONG) when it leaves the context no room to answer; a long
        history is tokenized newest message first and only as far as the context reaches (processing_rsa)."""
        history = call.history if call.task is Task.CHAT else ()  # the other tasks are single turns
        try:
            return self.processor.prompt_ids(call.task, call.prompt, history, len(call.images), self.context - 1)
        except PromptTooLong:
            raise ProtocolError(
                ErrorCode.PROMPT_TOO_LONG,
                f"model '{self.model_name}': the prompt with the image(s) and history leaves no room for an answer; "
                f"its context is {self.context} tokens. Shorten the conversation or the question",
            ) from None
        except ValueError as exc:  # a request valid in form that the model cannot take (no question, no phrase)
            raise ProtocolError(ErrorCode.INVALID_VALUE, f"model '{self.model_name}': {exc}", "prompt") from None

    def _generation(self, call: BackendCall, length: int, scored: bool = True) -> dict:
        """``generate`` keywords shared by every group: the length, the decoding and the watch (cancel, stop strings,
        streamed text; it reads the text exactly as parse_answer will). ``scored``: the output keeps scores (and,
        sampled, the raw logits the box scores need)."""
        max_new_tokens = min(call.options.max_new_tokens, self.context - length)
        watch = WatchCriteria(
            call.cancel,
            call.watch,
            render=self.processor.answer_text,
            keep=self.processor.is_answer_text,
            eos=(self.processor.token_ids[EOS],),
        )
        kwargs = {
            "max_new_tokens": max_new_tokens,
            "do_sample": False,
            "stopping_criteria": StoppingCriteriaList([watch]),
        }
        processors = sampler(call.decoding, self.device)
        if processors:  # sampled: the raw logits score the boxes, the processed scores leave one token
            kwargs.update(logits_processor=LogitsProcessorList(processors), output_logits=scored)
        return kwargs

    def _accounted(self, result: BackendResult, row: Sequence[int], call: BackendCall, length: int) -> BackendResult:
        """``result`` with its token counts and why it ended (``row``: the tokens generated for it)."""
        eos = (self.processor.token_ids[EOS],)
        written = written_tokens(row, eos)
        result.prompt_tokens = length
        result.completion_tokens = len(written)
        result.finish_reason = finish_reason(
            written, eos, min(call.options.max_new_tokens, self.context - length), call.watch.stopped
        )
        return result

    def _run_group(
        self, calls: Sequence[BackendCall], placements: Sequence[rsa_scale.Placement | None] = ()
    ) -> list[BackendResult]:
        """One group of calls (as fed: a placed window's call has the canvas as its image; ``placements``, where
        each lies on it, only tell what changed within the window)."""
        first = calls[0]
        placements = list(placements) or [None] * len(calls)
        pair = len(first.images) == 2
        ids = self._prompt_ids(first)
        length = len(ids)
        input_ids = torch.tensor([ids] * len(calls), dtype=torch.long)
        if not first.images:
            return [self._chat_without_image(call, input_ids[:1]) for call in calls]
        images = [tuple(call.images) if pair else call.images[0] for call in calls]
        batch = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "pixel_values": self.processor.pixel_values(images),
        }
        if first.task is Task.CAPTION and self.model.config.caption_num_beams > 1:
            return self._captions_by_beam_search(calls, batch, length)
        with torch.inference_mode():
            visual = self.model.encode_images(batch["pixel_values"].to(self.device, self.model.dtype))
            output = self.model.generate(
                batch["input_ids"].to(self.device),
                attention_mask=batch["attention_mask"].to(self.device),
                visual=visual,
                return_dict_in_generate=True,
                output_scores=True,
                output_hidden_states=True,
                **self._generation(first, length),
            )
        if any(call.cancel.is_set() for call in calls):
            raise cancelled(self)
        results = []
        with torch.inference_mode():
            answers = [self.processor.parse_answer(row, (c.images[0].shape[1], c.images[0].shape[0])) for row, c in
                       zip(output.sequences.tolist(), calls)]  # fmt: skip
            redecoded = (
                self._answers_agreeing_with_verdicts(calls, batch, visual, answers)
                if first.task is Task.CHANGE and self.model.config.change_seg_marks_changed
                else {}
            )
            for sample, (answer, _) in redecoded.items():
                answers[sample] = answer
            wanted = [
                sample
                for sample, a in enumerate(answers)
                if a.segments and sample not in redecoded and self._wants_masks(first.task, visual, sample)
            ]
            masks = self._mask_logits(output, visual, wanted).joined(
                [(sample, logits) for sample, (_, logits) in redecoded.items() if logits is not None]
            )
            regions = self._box_regions(output, visual, answers, [c.images[0].shape[:2] for c in calls])
            instructions = (
                self.model.instructions(batch["input_ids"].to(self.device), output.hidden_states[0][-1])
                if self.model.region_selector is not None and first.task in (Task.GROUND, Task.SEGMENT)
                else None
            )
            for sample, (call, answer) in enumerate(zip(calls, answers)):
                height, width = call.images[0].shape[:2]
                generated = _Generated(
                    output,
                    visual,
                    sample,
                    masks,
                    regions,
                    call.images[0],
                    None if instructions is None else instructions[sample],
                    placements[sample],
                )
                result = self._result(call, answer, generated, (width, height))
                results.append(self._accounted(result, output.sequences[sample].tolist(), call, length))
        return results

    def _chat_without_image(self, call: BackendCall, input_ids: torch.Tensor) -> BackendResult:
        """A chat with no image: the language model alone, on the conversation (text only: no boxes or masks)."""
        if call.task is not Task.CHAT:
            raise ProtocolError(ErrorCode.BAD_IMAGE_COUNT, f"{call.task.value} needs an image")
        with torch.inference_mode():
            sequences = self.model.generate(
                input_ids.to(self.device),
                attention_mask=torch.ones_like(input_ids).to(self.device),
                **self._generation(call, input_ids.shape[1], scored=False),
            )
        if call.cancel.is_set():
            raise cancelled(self)
        row = sequences[0].tolist()
        answer = self.processor.parse_answer(row, (1, 1))
        return self._accounted(BackendResult(text=answer.text), row, call, input_ids.shape[1])

    def _captions_by_beam_search(self, calls: Sequence[BackendCall], batch: dict, length: int) -> list[BackendResult]:
        """Captions decoded with the checkpoint's ``caption_num_beams`` and ``caption_length_penalty``
        (text only: a caption has no boxes or masks)."""
        config = self.model.config
        with torch.inference_mode():
            sequences = self.model.generate(
                batch["input_ids"].to(self.device),
                attention_mask=batch["attention_mask"].to(self.device),
                pixel_values=batch["pixel_values"].to(self.device, self.model.dtype),
                max_new_tokens=min(calls[0].options.max_new_tokens, self.context - length),
                do_sample=False,
                num_beams=config.caption_num_beams,
                length_penalty=config.caption_length_penalty,
                stopping_criteria=StoppingCriteriaList([CancelCriteria(calls[0].cancel)]),
            )
        if any(call.cancel.is_set() for call in calls):
            raise cancelled(self)
        return [
            BackendResult(text=self.processor.parse_answer(row, (c.images[0].shape[1], c.images[0].shape[0])).text)
            for row, c in zip(sequences.tolist(), calls)
        ]

    def _answers_agreeing_with_verdicts(
        self, calls: Sequence[BackendCall], batch: dict, visual: RSAVisualFeatures, answers: Sequence[Answer]
    ) -> dict[int, tuple[Answer, torch.Tensor | None]]:
        """Change answers that contradict the change head's verdict, decoded again: ``sample -> (answer,
        its [SEG] mask logits or None)``.

        The language model says "changed" by ending its caption with ``[SEG]``; the head (calibrated on
        the validation split) is the better judge, so where they disagree the pair is decoded by beam
        search and the most probable of the candidates that agree with the head is taken, its change
        masks read by one teacher-forced pass. When no candidate agrees the caption is dropped and
        only the verdict is given (the answer never says "unchanged" after "changed"); a "changed" one
        then takes its mask from the per-pixel change head where the model has one (pixels scored
        over 0.5, whatever the mask threshold).
        """
        config, eos = self.model.config, self.processor.token_ids[EOS]
        found: dict[int, tuple[Answer, torch.Tensor | None]] = {}
        for sample, (call, answer) in enumerate(zip(calls, answers)):
            changed = self._changed(visual, sample)
            if changed == bool(answer.segments):
                continue
            prompt = batch["input_ids"][sample][batch["attention_mask"][sample].bool()][None].to(self.device)
            pixels = batch["pixel_values"][sample : sample + 1].to(self.device, self.model.dtype)
            beams = max(4, config.caption_num_beams)
            with torch.inference_mode():
                candidates = self.model.generate(
                    prompt,
                    attention_mask=torch.ones_like(prompt),
                    pixel_values=pixels,
                    max_new_tokens=min(call.options.max_new_tokens, self.context - prompt.shape[1]),
                    do_sample=False,
                    num_beams=beams,
                    num_return_sequences=beams,
                    length_penalty=config.caption_length_penalty,
                    stopping_criteria=StoppingCriteriaList([CancelCriteria(call.cancel)]),
                )
            if call.cancel.is_set():
                raise cancelled(self)
            size = (call.images[0].shape[1], call.images[0].shape[0])
            found[sample] = (Answer("", (), ()), None)  # unless a candidate agrees
            if changed and visual.change_pixel_logits is not None:  # shifted so that mask_threshold falls at 0.5
                shift = torch.logit(torch.tensor(config.mask_threshold, dtype=torch.float32)).clamp(-20, 20)
                found[sample] = (
                    Answer("", (), (SegRequest("", 0),)),
                    visual.change_pixel_logits[sample][None].float() + shift,
                )
            for row in candidates.tolist():
                row = row[: row.index(eos)] if eos in row else row
                candidate = self.processor.parse_answer(row, size)
                if bool(candidate.segments) != changed:
                    continue
                logits = None
                if changed:
                    ids = torch.cat([prompt, torch.tensor([row], device=prompt.device)], dim=1)
                    with torch.inference_mode():
                        logits = self.model(
                            input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids)
                        ).mask_logits
                found[sample] = (candidate, logits)
                break
        return found

    def _box_regions(
        self,
        output: GenerateDecoderOnlyOutput,
        visual: RSAVisualFeatures,
        answers: Sequence[Answer],
        shapes: Sequence[tuple[int, int]],
    ) -> dict[tuple[int, int], tuple[tuple[float, float, float, float], float]]:
        """With ``box_from_mask``: ``(sample, first loc position) -> (box, score)`` read off each box's mask,
        for the boxes whose mask has a region above ``box_mask_threshold`` (one decoder pass for the batch)."""
        if not self.model.config.box_from_mask:
            return {}
        keys = [(sample, b.positions[0]) for sample, a in enumerate(answers) for b in a.boxes]
        if not keys:
            return {}
        states = torch.stack([output.hidden_states[step][-1][sample, -1] for sample, step in keys])
        owners = torch.tensor([sample for sample, _ in keys], device=states.device)
        logits = self.model.predict_masks(states, visual, owners)
        found = {}
        for key, row in zip(keys, logits):
            height, width = shapes[key[0]]
            region = region_box(row, (height, width), self.model.config.box_mask_threshold)
            if region is not None:
                found[key] = region
        return found

    def _wants_masks(self, task: Task, visual: RSAVisualFeatures, sample: int) -> bool:
        """Whether the sample's [SEG] masks are used: always, except for a pair the change head calls unchanged."""
        return task is not Task.CHANGE or self._changed(visual, sample)

    def _changed(self, visual: RSAVisualFeatures, sample: int) -> bool:
        """The change head's verdict on pair ``sample``: changed from the config's ``change_threshold`` on."""
        return self._change_probability(visual, sample) >= self.model.config.change_threshold

    @staticmethod
    def _change_probability(visual: RSAVisualFeatures, sample: int) -> float:
        return float(torch.sigmoid(visual.change_logits[sample]))

    def _mask_logits(
        self, output: GenerateDecoderOnlyOutput, visual: RSAVisualFeatures, samples: list[int]
    ) -> _MaskLogits:
        """The mask decoder's logits for every ``[SEG]`` the ``samples`` wrote, in one pass for the whole batch."""
        if not samples:
            return _MaskLogits(None, None, None)
        states, owners, steps = self.model.generated_seg_states(output)
        keep = torch.isin(owners, torch.tensor(samples, device=owners.device))
        states, owners, steps = states[keep], owners[keep], steps[keep]
        return _MaskLogits(self.model.predict_masks(states, visual, owners), owners, steps)

    # --- search (batch jobs) ----------------------------------------------------------------------

    def embed_images(self, images: Sequence[np.ndarray], cancel: threading.Event | None = None) -> np.ndarray:
        """``[N, T, D]`` float32: each window's projected visual tokens, what the language model reads for it.

        The RSA model has no contrastive head, so a layer search is retrieval *by the captioner*
        (RS-CapRet): these tokens are cached per tile, and :meth:`score_text` asks how likely the
        model finds the searched description as the tile's caption. Search is exposed through these
        two methods for batch jobs only, not as the ``retrieve`` task of /v1/analyze, where a CLIP
        model ranks a handful of windows better and faster.
        """
        self.ensure_loaded()
        out = []
        for start in range(0, len(images), SEARCH_BATCH):
            if cancel is not None and cancel.is_set():
                raise cancelled(self)
            pixels = self.processor.pixel_values(list(images[start : start + SEARCH_BATCH]))
            with torch.inference_mode():
                visual = self.model.encode_images(pixels.to(self.device, self.model.dtype))
            out.append(visual.tokens.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.processor.num_image_tokens, 0), np.float32)

    def score_text(self, embeddings: np.ndarray, text: str, cancel: threading.Event | None = None) -> np.ndarray:
        """Mean log-probability per token of ``text`` as the caption of each embedded window (higher is better)."""
        self.ensure_loaded()
        sentence = " ".join(text.split())
        if not sentence:
            raise ProtocolError(ErrorCode.INVALID_VALUE, "a search needs a description to score the tiles by")
        prompt = self.processor.format_prompt(Task.CAPTION, answer=sentence)
        encoded = self.processor([prompt], [np.zeros((1, 1, 3), np.uint8)], return_labels=True)
        if encoded["input_ids"].shape[1] >= self.context:
            raise ProtocolError(
                ErrorCode.PROMPT_TOO_LONG, f"model '{self.model_name}': the description is too long to score"
            )
        labels = encoded["labels"][:, 1:].to(self.device)
        labels[labels == self.processor.token_ids[EOS]] = -100  # the description, not where it ends
        counted = (labels != -100).sum().clamp(min=1)
        # Only the description's positions need logits (the image tokens are most of the sequence).
        positions = (labels[0] != -100).nonzero().squeeze(-1)
        labels = labels[:, positions]
        scores = []
        for start in range(0, len(embeddings), SEARCH_BATCH):
            if cancel is not None and cancel.is_set():
                raise cancelled(self)
            tokens = torch.from_numpy(np.asarray(embeddings[start : start + SEARCH_BATCH], np.float32))
            count = tokens.shape[0]
            ids = encoded["input_ids"].to(self.device).expand(count, -1)
            with torch.inference_mode():
                visual = RSAVisualFeatures(tokens=tokens.to(self.device, self.model.dtype))
                embeds = self.model.embed(ids, visual)
                logits = self.model.language_model(
                    inputs_embeds=embeds, use_cache=False, logits_to_keep=positions
                ).logits
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                wanted = labels.expand(count, -1)
                picked = logprobs.gather(-1, wanted.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (wanted != -100)
            scores.append((picked.sum(dim=1) / counted).cpu().numpy())
        return np.concatenate(scores) if scores else np.zeros(0, np.float32)

    def _result(
        self,
        call: BackendCall,
        answer: Answer,
        generated: _Generated,
        window: tuple[int, int],
    ) -> BackendResult:
        phrase = boxes.target_phrase(call.prompt) if call.task in (Task.GROUND, Task.SEGMENT) else ""
        detections = []
        width, height = window
        classes = generated.class_regions(self.model, (height, width)) if self.model.config.class_aware_boxes else None
        select = call.task is Task.GROUND and len(answer.boxes) == 1 and generated.instruction is not None
        for b in answer.boxes:
            box, score = generated.regions.get((generated.sample, b.positions[0])) or (
                b.box,
                self._box_score(b, generated),
            )
            label = b.label or phrase or "object"
            chosen = (
                classes.selected_box(b.label or "", generated.state(b.positions[0]), generated.instruction)
                if classes is not None and select
                else None
            )
            if chosen is not None:
                box = chosen
            elif classes is not None:
                box = classes.snap(b.label or "", box)
                if any(d.box == box and d.label == label for d in detections):
                    continue  # snapped onto a region an earlier box of the answer took: one object, one box
            detections.append(Detection(FeatureKind.BOX, label, score, box=box))
        if call.task is not Task.CHANGE:
            detections += self._masks(answer, generated, window, FeatureKind.MASK, phrase or "object")
            if call.task in (Task.GROUND, Task.SEGMENT):
                return BackendResult(text=_summary(detections), detections=detections)
            return BackendResult(text=answer.text, detections=detections)
        probability = self._change_probability(generated.visual, generated.sample)
        changed = probability >= self.model.config.change_threshold
        told = self._told_changes(call, generated) if changed else ""
        said = told or answer.text
        text = f"{'changed' if changed else 'unchanged'} ({probability:.0%})" + (f": {said}" if said else "")
        if changed:
            detections += self._masks(answer, generated, window, FeatureKind.CHANGE, "change", score=probability)
        return BackendResult(text=text, detections=detections)

    def _told_changes(self, call: BackendCall, generated: _Generated) -> str:
        """What changed, where and how much, in words (rsa_changes), from the change head's per-pixel map and the
        class maps of both dates; "" for a model without those heads or when no patch is large enough."""
        config, visual = self.model.config, generated.visual
        if visual.change_pixel_logits is None or not config.class_aware_masks or not config.class_names:
            return ""
        height, width = call.images[0].shape[:2]
        logits = visual.change_pixel_logits[generated.sample][None, None].float()
        probability = F.interpolate(logits, size=(height, width), mode="bilinear")[0]
        placement = generated.placement
        if placement is not None:  # what changed within the window, not on the canvas around it
            probability = placement.maps(probability)
        changed = torch.sigmoid(probability[0]) > rsa_changes.PIXEL_THRESHOLD
        if not bool(changed.any()):
            return ""
        before, after = (
            self._class_maps(image, rsa_changes.BUILDINGS, call.pixel_size_m, call.cancel)[0]
            for image in call.images[:2]
        )
        if placement is not None:
            before, after = placement.maps(before), placement.maps(after)
        return rsa_changes.text(rsa_changes.describe(changed, before, after, config.class_names))

    def _box_score(self, located: LocatedPhrase, generated: _Generated) -> float:
        """Mean over the box's four loc tokens of the probability within one bin of the bin written."""
        output, sample = generated.output, generated.sample
        scores = output.logits if getattr(output, "logits", None) is not None else output.scores  # sampled: raw
        loc_ids = torch.tensor(self.processor.loc_ids, device=scores[0].device)
        masses = []
        for position in located.positions:
            probs = torch.softmax(scores[position][sample].float(), dim=-1)[loc_ids]
            chosen = int(output.sequences[sample, position])
            centre = self.processor.loc_bins[chosen]
            masses.append(float(probs[max(centre - 1, 0) : centre + 2].sum()))
        return float(np.mean(masses))

    def _masks(
        self,
        answer: Answer,
        generated: _Generated,
        window: tuple[int, int],
        kind: FeatureKind,
        fallback_label: str,
        score: float | None = None,
    ) -> list[Detection]:
        """Each ``[SEG]``'s mask at the window's size, labelled with the phrase before it; empty masks are dropped.

        A change mask is labelled ``fallback_label`` (its phrase is the change caption) and
        scored ``score``; other masks by their mean probability inside the mask.
        """
        if not answer.segments:
            return []
        found = generated.masks
        if found.logits is None:  # not decoded with the batch (a sample without [SEG] in its answer)
            return []
        mine = found.samples == generated.sample
        logits, steps = found.logits[mine], found.steps[mine]
        width, height = window
        probabilities = torch.sigmoid(
            F.interpolate(logits[:, None].float(), size=(height, width), mode="bilinear")[:, 0]
        )
        labels = {s.position: s.label for s in answer.segments} if kind is not FeatureKind.CHANGE else {}
        classes = (
            generated.class_regions(self.model, (height, width))
            if labels and self.model.config.class_aware_masks
            else None
        )
        select = len(steps) == 1 and generated.instruction is not None
        detections = []
        for step, probability in zip(steps.tolist(), probabilities):
            inside = probability > self.model.config.mask_threshold
            if classes is not None:
                query = (generated.state(step), generated.instruction) if select else None
                inside, probability = classes.refine(labels.get(step) or "", inside, probability, query)
            if not inside.any():
                continue
            mask = inside.cpu().numpy()
            rows, cols = np.nonzero(mask)
            box = (float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))
            mask_score = float(probability[inside].mean()) if score is None else score
            detections.append(Detection(kind, labels.get(step) or fallback_label, mask_score, box=box, mask=mask))
        return detections


@dataclass(frozen=True)
class _Generated:
    """One sample of a batched generation: the whole output, the images' features and which sample it is."""

    output: GenerateDecoderOnlyOutput
    visual: RSAVisualFeatures
    sample: int
    masks: _MaskLogits
    regions: dict[tuple[int, int], tuple[tuple[float, float, float, float], float]]  # _box_regions
    image: np.ndarray | None = None  # the window, for the region selector's colours
    instruction: RSAInstruction | None = None  # the user's turn, with a region selector
    placement: rsa_scale.Placement | None = None  # where the window lies on the image fed (None: it is that image)

    def state(self, step: int) -> torch.Tensor:
        """The last hidden state of the generation step that wrote token ``step`` of this sample's answer."""
        return self.output.hidden_states[step][-1][self.sample, -1]

    def class_regions(self, model: RSAForConditionalGeneration, shape: tuple[int, int]) -> ClassRegions:
        """This sample's class map and regions at the window ``shape`` (height, width)."""
        return ClassRegions(model, self.visual, self.sample, shape, self.image)


@dataclass(frozen=True)
class _MaskLogits:
    """The mask logits ``[n, M, M]`` of a batch's ``[SEG]`` tokens, with each one's sample and step (None: no [SEG])."""

    logits: torch.Tensor | None
    samples: torch.Tensor | None
    steps: torch.Tensor | None

    def joined(self, more: Sequence[tuple[int, torch.Tensor]]) -> _MaskLogits:
        """These and ``(sample, logits [n, M, M])`` decoded apart (their steps count from 0)."""
        if not more:
            return self
        parts = ([] if self.logits is None else [(self.logits, self.samples, self.steps)]) + [
            (
                logits,
                torch.full((len(logits),), sample, device=logits.device),
                torch.arange(len(logits), device=logits.device),
            )
            for sample, logits in more
        ]
        return _MaskLogits(*(torch.cat([part[i] for part in parts]) for i in range(3)))


def _names(items: Iterable[object]) -> str:
    names = sorted(str(i) for i in items)
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def _summary(detections: list[Detection]) -> str:
    """ "3 x building, 4 x water bodies": the features each label will be drawn as, a mask of several separate
    parts counting each part (the engine draws one polygon per part of at least :data:`MIN_PART_PIXELS`)."""
    if not detections:
        return "nothing found"
    counts: Counter[str] = Counter()
    for d in detections:
        counts[d.label] += (
            _parts(d.mask) if d.kind is FeatureKind.MASK and d.mask is not None and not d.one_object else 1
        )
    return ", ".join(f"{n} x {label}" for label, n in counts.items())


def _parts(mask: np.ndarray) -> int:
    """How many separate (4-connected) parts of at least MIN_PART_PIXELS pixels ``mask`` has, at least one."""
    sizes = np.bincount(rsa_instances.connected(mask).ravel())[1:]
    return max(1, int((sizes >= MIN_PART_PIXELS).sum()))
