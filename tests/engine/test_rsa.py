"""The RSA model family (configuration, modeling, processing) and the ``rsa`` backend, on CPU.

The model is configs/tiny.json with random weights (conftest.tiny_rsa_path). Random weights
answer arbitrary tokens, so backend runs are checked for types and shapes; boxes, masks and
change detections are checked by scripting the generated tokens through the real model.
"""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import AutoConfig, AutoModelForImageTextToText, LogitsProcessorList

from rs_assistant.core.protocol import ErrorCode, FeatureKind, Message, Options, ProtocolError, Role, Task
from rs_assistant.engine.backends.base import BackendCall, BackendResult, Detection
from rs_assistant.engine.backends.rsa import RSABackend
from rs_assistant.engine.models.rsa import (
    RSAConfig,
    RSAForConditionalGeneration,
    RSAProcessor,
    build_tokenizer,
    load_named_config,
)
from rs_assistant.engine.models.rsa.modeling_rsa import RSAClassRefiner
from tests.engine.conftest import RSA_CORPUS
from tests.engine.scripted import Script

RNG = np.random.default_rng(0)
WINDOW = RNG.integers(0, 256, (48, 80, 3), dtype=np.uint8)  # 80 wide, 48 high: not square
AFTER = RNG.integers(0, 256, (48, 80, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def processor(tiny_rsa_path: Path) -> RSAProcessor:
    return RSAProcessor.from_pretrained(tiny_rsa_path)


@pytest.fixture
def model(tiny_rsa_path: Path) -> RSAForConditionalGeneration:
    return RSAForConditionalGeneration.from_pretrained(tiny_rsa_path)


@pytest.fixture(scope="module")
def backend(tiny_rsa_path: Path) -> RSABackend:
    loaded = RSABackend("rsa-tiny", {"path": str(tiny_rsa_path)}, "cpu")
    loaded.ensure_loaded()
    return loaded


def samples(processor: RSAProcessor) -> dict[str, torch.Tensor]:
    """Three training samples (caption, ground, segment) with one mask for the [SEG] sample."""
    window = (80, 48)
    texts = [
        processor.format_prompt(Task.CAPTION, answer="a residential area with twelve buildings along a road."),
        processor.format_prompt(
            Task.GROUND,
            "find the storage tanks",
            answer=processor.ground_answer([("storage tank", (8, 4, 30, 20))], window),
        ),
        processor.format_prompt(Task.SEGMENT, "segment water bodies", answer="water bodies [SEG]"),
    ]
    images = [RNG.integers(0, 256, (48, 80, 3), dtype=np.uint8) for _ in texts]
    batch = processor(texts, images, return_labels=True)
    target = torch.zeros(3, 48, 80)
    target[2, 10:30, 20:60] = 1
    batch["seg_targets"] = target
    return batch


def pair_batch(processor: RSAProcessor) -> dict[str, torch.Tensor]:
    texts = [
        processor.format_prompt(Task.CHANGE, pair=True, answer="two buildings were built near the road. [SEG]"),
        processor.format_prompt(Task.CHANGE, pair=True, answer="there is no change."),
    ]
    batch = processor(texts, [(WINDOW, AFTER), (WINDOW, WINDOW)], return_labels=True)
    target = torch.zeros(2, 48, 80)
    target[0, :24, :40] = 1
    batch["seg_targets"] = target
    batch["change_labels"] = torch.tensor([1, 0])
    return batch


# --- configuration and modeling ------------------------------------------------------------------


def test_named_configs_load_and_fit_together():
    for name in ("tiny", "default", "large"):
        config = load_named_config(name)
        assert config.model_type == "rsa"
        assert config.num_image_tokens == (config.grid_size // config.token_merge) ** 2
    assert load_named_config("large").vision_pretrained_path and load_named_config("large").freeze_llm
    with pytest.raises(FileNotFoundError, match="known: default, large, tiny"):
        load_named_config("huge")
    with pytest.raises(StrictDataclassClassValidationError, match="multiple of patch_size"):
        RSAConfig(vision_config={"model_type": "clip_vision_model", "image_size": 30, "patch_size": 8})


def test_forward_loss_is_finite_and_gradients_reach_every_part(model, processor):
    model.train()
    out = model(**samples(processor))
    assert torch.isfinite(out.loss) and out.lm_loss is not None and out.mask_loss is not None
    assert out.mask_logits.shape == (1, model.config.mask_size, model.config.mask_size)
    assert out.logits.shape[:2] == samples(processor)["input_ids"].shape
    out.loss.backward()
    for part in (model.projector, model.mask_decoder, model.vision_tower, model.language_model):
        grads = [p.grad for p in part.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), type(part).__name__


def test_change_pairs_train_the_difference_module_and_change_head(model, processor):
    model.train()
    model.activation_checkpointing_enable()
    out = model(**pair_batch(processor))
    assert out.change_logits.shape == (2,)
    assert torch.isfinite(out.change_loss) and torch.isfinite(out.mask_loss) and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.difference.change_head.weight.grad.abs().sum() > 0
    assert model.delta_projector.net[0].weight.grad.abs().sum() > 0


NEW_SWITCHES = ("projector_norm", "change_pooling", "num_aux_classes", "aux_class_loss_weight")


def test_a_checkpoint_without_the_new_switches_loads_and_answers_as_before(tiny_rsa_path, processor, tmp_path):
    """The shipped rsa-default's config.json predates projector_norm, change_pooling and the aux head."""
    old = tmp_path / "old"
    shutil.copytree(tiny_rsa_path, old)
    config = json.loads((old / "config.json").read_text())
    for key in NEW_SWITCHES:
        config.pop(key, None)
    (old / "config.json").write_text(json.dumps(config))
    reference = RSAForConditionalGeneration.from_pretrained(tiny_rsa_path).eval()
    loaded, info = RSAForConditionalGeneration.from_pretrained(old, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    assert (loaded.config.projector_norm, loaded.config.change_pooling, loaded.config.num_aux_classes) == (
        False,
        "mean",
        0,
    )
    assert set(loaded.state_dict()) == set(reference.state_dict())
    loaded.eval()
    for batch in (samples(processor), pair_batch(processor)):
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
        with torch.no_grad():
            got, expected = loaded(**inputs), reference(**inputs)
        assert torch.equal(got.logits, expected.logits)
        assert got.change_logits is None or torch.equal(got.change_logits, expected.change_logits)


def test_soft_location_labels_charge_a_near_bin_less_than_a_far_one(model, processor):
    """With location_label_sigma, a <loc_i> label is a Gaussian over the bins; other labels stay one-hot."""
    from rs_assistant.engine.models.rsa.modeling_rsa import _soft_location_loss

    first, bins = processor.loc_ids[0], processor.num_location_bins
    assert model.config.loc_token_id == first  # bound from the tokenizer when the checkpoint was built
    vocab = model.config.text_config.vocab_size
    labels = torch.tensor([[first + 40, 3, -100]])

    def loss_when_the_model_says(bin_: int, sigma: float) -> float:
        logits = torch.full((1, 3, vocab), -10.0)
        logits[0, 0, first + bin_] = 10.0  # sure of one bin
        logits[0, 1, 3] = 10.0  # right on the plain token
        return float(_soft_location_loss(logits, labels, first, bins, sigma))

    near, far = loss_when_the_model_says(41, 1.5), loss_when_the_model_says(90, 1.5)
    assert near < far and loss_when_the_model_says(40, 1.5) < near
    plain = F.cross_entropy(
        torch.full((1, vocab), -10.0).index_fill_(1, torch.tensor([first + 41]), 10.0), torch.tensor([first + 40])
    )
    assert loss_when_the_model_says(41, 1e-3) == pytest.approx(float(plain) / 2, rel=1e-3)  # sigma -> 0: one-hot again
    soft = switched_model_from(model, location_label_sigma=1.5)
    batch = samples(processor)
    with torch.no_grad():
        assert not torch.isclose(
            soft(**batch).lm_loss, model(**batch).lm_loss
        )  # the ground sample's boxes count softly
    with pytest.raises(StrictDataclassClassValidationError, match="location_label_sigma"):
        RSAConfig.from_dict({**model.config.to_dict(), "location_label_sigma": -1.0})


def test_visual_position_encoding_tells_the_lm_where_each_visual_token_is(tiny_rsa_path, processor, tmp_path):
    from rs_assistant.engine.models.rsa.modeling_rsa import RSAVisualFeatures, grid_code

    model = switched_model(tiny_rsa_path, visual_position_encoding=True)
    config = model.config
    side = config.grid_size // config.token_merge
    same = RSAVisualFeatures(
        tokens=torch.zeros(1, side * side, config.text_config.hidden_size)
    )  # one content everywhere
    ids = processor([processor.format_prompt(Task.CAPTION)], [WINDOW])["input_ids"]
    slots = (ids[0] == config.image_token_id).nonzero()[:, 0]
    with torch.no_grad():
        placed = model.embed(ids, same)[0, slots]
    assert torch.unique(placed, dim=0).shape[0] == side * side  # every cell reads differently ...
    assert torch.allclose(placed, 0.5 * grid_code(side, config.text_config.hidden_size, config.num_location_bins))
    # ... and <loc_i> starts as bin i's code: neighbouring bins alike, distant ones not
    loc = model.get_input_embeddings().weight[config.loc_token_id : config.loc_token_id + config.num_location_bins]
    similarity = F.cosine_similarity(loc[40:41], loc, dim=-1)
    assert similarity[41] > 0.5 > similarity[90] and int(similarity.argmax()) == 40
    model.train()
    out = model(**samples(processor))
    out.loss.backward()
    assert model.visual_position.scale.grad is not None and model.visual_position.scale.grad != 0
    model.eval()
    model.save_pretrained(tmp_path / "positions")
    again = RSAForConditionalGeneration.from_pretrained(tmp_path / "positions").eval()
    batch = samples(processor)
    with torch.no_grad():
        assert torch.equal(again(**batch).logits, model(**batch).logits)
        pair = pair_batch(processor)
        assert torch.isfinite(model(**pair).loss)  # before, after and delta blocks each get the code


def switched_model_from(model: RSAForConditionalGeneration, **switches) -> RSAForConditionalGeneration:
    """The same weights under a config with ``switches``."""
    config = RSAConfig.from_dict({**model.config.to_dict(), **switches})
    other = RSAForConditionalGeneration(config)
    other.load_state_dict(model.state_dict())
    return other.eval()


def switched_model(tiny_rsa_path: Path, **switches) -> RSAForConditionalGeneration:
    config = RSAConfig.from_pretrained(tiny_rsa_path)
    for key, value in switches.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    return RSAForConditionalGeneration(config)


def test_projector_norm_puts_visual_tokens_at_unit_scale(tiny_rsa_path, processor):
    model = switched_model(tiny_rsa_path, projector_norm=True).eval()
    with torch.no_grad():
        single = model.encode_images(samples(processor)["pixel_values"]).tokens
        pair = model.encode_images(pair_batch(processor)["pixel_values"]).tokens
    for tokens in (single, pair):  # pair: before, after and the difference tokens (delta projector)
        assert torch.allclose(
            tokens.std(dim=-1, unbiased=False), torch.ones(tokens.shape[:2]), atol=0.1
        )  # LayerNorm eps
        assert tokens.mean(dim=-1).abs().max() < 1e-4


@pytest.mark.parametrize("pooling", ["max", "attention"])
def test_change_pooling_variants_train_the_change_head(tiny_rsa_path, processor, pooling):
    model = switched_model(tiny_rsa_path, change_pooling=pooling).train()
    out = model(**pair_batch(processor))
    assert out.change_logits.shape == (2,) and torch.isfinite(out.change_loss)
    out.loss.backward()
    assert model.difference.change_head.weight.grad.abs().sum() > 0
    if pooling == "attention":
        assert model.difference.pool_score.weight.grad.abs().sum() > 0
    with pytest.raises(StrictDataclassClassValidationError, match="change_pooling"):
        RSAConfig(change_pooling="sum")


def test_aux_class_loss_supervises_the_vision_encoder_per_patch(tiny_rsa_path, processor):
    model = switched_model(tiny_rsa_path, num_aux_classes=12, aux_class_loss_weight=0.5).train()
    batch = samples(processor)
    without = model(**batch)
    assert without.aux_class_loss is None  # no targets: no aux term
    class_map = torch.zeros(3, 48, 80, dtype=torch.long)
    class_map[:, :24] = 10
    class_map[1, :, 40:] = 3
    out = model(**batch, class_targets=class_map)
    assert out.aux_class_loss is not None and torch.isfinite(out.aux_class_loss)
    assert torch.allclose(out.loss, without.loss + 0.5 * out.aux_class_loss)
    out.loss.backward()
    assert model.aux_class_head.weight.grad.abs().sum() > 0
    assert model.vision_tower.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    pairs = pair_batch(processor)
    pair_out = model(**pairs, class_targets=torch.zeros(2, 2, 48, 80, dtype=torch.long))
    assert torch.isfinite(pair_out.aux_class_loss)
    with pytest.raises(ValueError, match="outside 0..11"):
        model(**batch, class_targets=class_map + 5)
    off = switched_model(tiny_rsa_path, num_aux_classes=12)  # a head but weight 0: no aux term
    assert off(**batch, class_targets=class_map).aux_class_loss is None


def test_pixel_change_head_scores_the_decoders_pixels_and_learns_where_changes_are(model, processor):
    """``change_pooling = "pixel"``: the verdict is the highest score of a head on the mask decoder's
    pixel features of the difference, trained against the change mask at that resolution."""
    config = RSAConfig.from_dict({**model.config.to_dict(), "change_pooling": "pixel", "change_dense_loss_weight": 1.0})
    torch.manual_seed(0)
    pixel = RSAForConditionalGeneration(config)
    assert pixel.difference.change_head is None
    batch = pair_batch(processor)
    target = torch.zeros(2, 48, 80)
    target[0, 6:12, 10:20] = 1  # smaller than a patch of the model's input
    batch["change_targets"] = target
    optimizer = torch.optim.AdamW(pixel.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        out = pixel(**batch)
        first = first if first is not None else out.change_dense_loss.item()
        optimizer.zero_grad()
        (out.change_dense_loss + out.change_loss).backward()
        optimizer.step()
    assert out.change_dense_loss.item() < 0.5 * first
    visual = pixel.encode_images(batch["pixel_values"])
    side = config.mask_size
    assert visual.change_pixel_logits.shape == (2, side, side) and visual.change_patch_logits is None
    assert torch.allclose(visual.change_logits, visual.change_pixel_logits.flatten(1).max(dim=1).values)
    assert visual.change_logits[0] > visual.change_logits[1]  # the changed pair scores higher
    changed = visual.change_pixel_logits[0]
    inside = changed[side * 6 // 48 : side * 12 // 48, side * 10 // 80 : side * 20 // 80].mean()
    assert inside > changed[side // 2 :, side // 2 :].mean()  # where the change is, not far from it
    with pytest.raises(ValueError, match="no per-pixel change head"):
        model.mask_decoder.pixel_change_logits(visual.mask_features)


def test_pixel_class_head_learns_land_cover_at_the_mask_decoders_resolution(tiny_rsa_path, processor):
    """``pixel_class_loss_weight``: a per-pixel land-cover head on the pixel features the mask queries
    read, trained on single images only; it learns a class map finer than a patch."""
    model = switched_model(tiny_rsa_path, num_aux_classes=12, pixel_class_loss_weight=1.0).train()
    batch = samples(processor)
    without = model(**batch)
    assert without.pixel_class_loss is None  # no targets: no term
    size = model.config.mask_size
    class_map = torch.zeros(3, size, size, dtype=torch.long)
    class_map[:, : size // 2] = 10
    class_map[1, :, size // 2 + 1 :] = 3  # an edge that falls inside a patch
    out = model(**batch, class_targets=class_map)
    assert out.aux_class_loss is None and torch.allclose(out.loss, without.loss + out.pixel_class_loss)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        out = model(**batch, class_targets=class_map)
        optimizer.zero_grad()
        out.pixel_class_loss.backward()
        optimizer.step()
    visual = model.encode_images(batch["pixel_values"])
    predicted = model.mask_decoder.pixel_class_logits(visual.mask_features, visual.mask_detail).argmax(1)
    assert predicted.shape == class_map.shape
    assert (predicted == class_map).float().mean() > 0.95
    pair_out = model(**pair_batch(processor), class_targets=torch.zeros(2, 2, size, size, dtype=torch.long))
    assert pair_out.pixel_class_loss is None  # a pair's mask features are its difference
    off = switched_model(tiny_rsa_path, num_aux_classes=12)
    assert off.mask_decoder.class_pixels is None and off(**batch, class_targets=class_map).pixel_class_loss is None
    with pytest.raises(ValueError, match="no per-pixel class head"):
        off.mask_decoder.pixel_class_logits(visual.mask_features)
    with pytest.raises(StrictDataclassClassValidationError, match="pixel_class_loss_weight 1.0 must be 0"):
        RSAConfig.from_dict({**model.config.to_dict(), "num_aux_classes": 0})


def test_pixel_class_balance_weighs_a_rare_class_by_the_inverse_square_root_of_its_share(tiny_rsa_path, processor):
    """``pixel_class_balance`` 0.5: a class on 1% of the pixels weighs 9.9 times one on 98% (sqrt of the
    share ratio), absent classes weigh nothing, and the loss is that weighted cross-entropy."""
    from rs_assistant.engine.models.rsa.modeling_rsa import _class_balance

    targets = torch.full((100,), 10, dtype=torch.long)
    targets[:1], targets[1:2] = 4, 6
    weight = _class_balance(targets, 12, 0.5)
    assert weight[4] / weight[10] == pytest.approx((0.98 / 0.01) ** 0.5)
    assert weight[0] == weight[1] == 0 and float(weight[targets].mean()) == pytest.approx(1.0)
    assert _class_balance(targets, 12, 0.0) is None

    model = switched_model(
        tiny_rsa_path, num_aux_classes=12, pixel_class_loss_weight=1.0, pixel_class_balance=0.5
    ).eval()
    with torch.no_grad():  # a head that favours the common class: the rare pixels' errors are the large ones
        model.mask_decoder.class_pixels[1].bias[8] += 4.0
    plain = switched_model(tiny_rsa_path, num_aux_classes=12, pixel_class_loss_weight=1.0).eval()
    plain.load_state_dict(model.state_dict())
    batch = samples(processor)
    size = model.config.mask_size
    class_map = torch.full((3, size, size), 8, dtype=torch.long)
    class_map[:, :2, :2] = 4  # a vehicle-sized corner
    with torch.no_grad():
        balanced = model(**batch, class_targets=class_map).pixel_class_loss
        unweighted = plain(**batch, class_targets=class_map).pixel_class_loss
        visual = model.encode_images(batch["pixel_values"])
        logits = model.mask_decoder.pixel_class_logits(visual.mask_features, visual.mask_detail)
    per_pixel = torch.nn.functional.cross_entropy(logits, class_map, reduction="none")
    rare = class_map == 4
    share = rare.float().mean()
    w_rare, w_common = share**-0.5, (1 - share) ** -0.5
    expected = (w_rare * per_pixel[rare].sum() + w_common * per_pixel[~rare].sum()) / (
        w_rare * rare.sum() + w_common * (~rare).sum()
    )
    assert balanced == pytest.approx(float(expected), rel=1e-4)
    assert unweighted == pytest.approx(float(per_pixel.mean()), rel=1e-4) and balanced > 2 * unweighted
    with pytest.raises(StrictDataclassClassValidationError, match="pixel_class_balance must lie in 0..1"):
        RSAConfig.from_dict({**model.config.to_dict(), "pixel_class_balance": 2.0})


def test_patch_classes_take_the_majority_class_of_each_patch():
    from rs_assistant.engine.models.rsa.modeling_rsa import _patch_classes

    class_map = torch.zeros(1, 8, 8, dtype=torch.long)
    class_map[0, :4, :4] = 2  # the top-left patch of a 2 x 2 grid
    class_map[0, 4:, 4:7] = 1  # 12 of the bottom-right patch's 16 pixels
    assert _patch_classes(class_map, 2, 3).tolist() == [[2, 0, 0, 1]]


def test_seg_targets_must_pair_with_seg_tokens(model, processor):
    batch = samples(processor)
    batch["seg_targets"] = [torch.zeros(0, 48, 80), torch.zeros(0, 48, 80), torch.zeros(2, 48, 80)]
    with pytest.raises(ValueError, match="sample 2 has 1 mask query"):
        model(**batch)
    batch = samples(processor)
    batch["input_ids"] = batch["input_ids"][:, 5:]
    with pytest.raises(ValueError, match="image placeholder tokens"):
        model(**{k: batch[k] for k in ("input_ids", "pixel_values")})


def test_frozen_encoder_and_llm_stay_unchanged_while_the_bridge_trains(tiny_rsa_path, processor):
    config = RSAConfig.from_pretrained(tiny_rsa_path)
    config.freeze_vision = config.freeze_llm = True
    config.train_new_embeddings = False
    model = RSAForConditionalGeneration.from_pretrained(tiny_rsa_path, config=config)
    assert not any(p.requires_grad for p in model.vision_tower.parameters())
    assert not any(p.requires_grad for p in model.language_model.parameters())
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("vision_tower.", "language_model."))}
    bridge = model.projector.net[0].weight.clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    model(**samples(processor)).loss.backward()
    optimizer.step()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items())
    assert not torch.equal(bridge, model.projector.net[0].weight)

    config.train_new_embeddings = True
    model = RSAForConditionalGeneration.from_pretrained(tiny_rsa_path, config=config)
    assert model.get_input_embeddings().weight.requires_grad
    assert not any(p.requires_grad for n, p in model.language_model.named_parameters() if "layers" in n)


def test_a_few_steps_overfit_fixed_samples(model, processor):
    torch.manual_seed(0)
    batch = samples(processor)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    print(f"overfit: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < 0.5 * losses[0]


def test_save_and_load_give_identical_logits_and_auto_classes_work(model, processor, tmp_path):
    model.eval()
    batch = samples(processor)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        expected = model(**inputs)
    model.save_pretrained(tmp_path)
    for loaded in (
        RSAForConditionalGeneration.from_pretrained(tmp_path, local_files_only=True),
        AutoModelForImageTextToText.from_pretrained(tmp_path, local_files_only=True),
    ):
        assert isinstance(loaded, RSAForConditionalGeneration)
        with torch.no_grad():
            got = loaded.eval()(**inputs)
        assert torch.equal(got.logits, expected.logits)
        assert torch.equal(got.mask_logits, expected.mask_logits)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), RSAConfig)


def test_fp16_weights_load_as_fp32_on_cpu(model, processor, tmp_path):
    model.to(torch.float16).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    backend = RSABackend("half", {"path": str(tmp_path)}, "cpu")
    backend.ensure_loaded()
    assert backend.model.dtype == torch.float32
    assert backend.model.config._attn_implementation == "sdpa"
    assert (tmp_path / "model.safetensors").stat().st_size < 2.2 * sum(p.numel() for p in model.parameters())


# --- processing -----------------------------------------------------------------------------------


def test_prompt_formats_and_labels_cover_only_answers(processor):
    text = processor.format_prompt(
        Task.CHAT,
        "How many vehicles?",
        [Message(Role.USER, "What is this?"), Message(Role.ASSISTANT, "A parking lot.")],
        answer="three.",
    )
    assert text == (
        "<s><image><|user|><chat> What is this?<|assistant|>A parking lot.</s>"
        "<|user|><chat> How many vehicles?<|assistant|>three.</s>"
    )
    assert processor.format_prompt(Task.GROUND, "Find all the storage tanks.") == (
        "<s><image><|user|><ground> find storage tanks<|assistant|>"
    )
    assert processor.format_prompt(Task.CHANGE, pair=True).startswith(
        "<s><image><image><delta><|user|><change> what changed"
    )
    batch = processor([text], [WINDOW], return_labels=True)
    assert (batch["input_ids"] == processor.token_ids["<image>"]).sum() == processor.num_image_tokens
    kept = batch["labels"][batch["labels"] != -100].tolist()
    assert processor.tokenizer.decode(kept).replace(" ", "") == "aparkinglot.</s>three.</s>"
    with pytest.raises(ValueError, match="needs a prompt"):
        processor.format_prompt(Task.SEGMENT, "  ")


def test_images_are_resized_to_the_model_square(processor):
    batch = processor(["<s><image>", "<s><image>"], [WINDOW, np.zeros((300, 20, 3), np.uint8)], padding_side="left")
    assert batch["pixel_values"].shape == (2, 3, processor.image_size, processor.image_size)
    pairs = processor.pixel_values([(WINDOW, AFTER)])
    assert pairs.shape == (1, 2, 3, processor.image_size, processor.image_size)


@pytest.mark.parametrize("window", [(512, 512), (640, 200), (37, 901)])
def test_location_bins_round_trip_within_half_a_bin(processor, window):
    width, height = window
    values = np.random.default_rng(1).uniform(0, 1, 200)
    for size in (width, height):
        for v in values * size:
            assert (
                abs(processor.dequantize(processor.quantize(v, size), size) - v)
                <= size / processor.num_location_bins / 2 + 1e-9
            )
    box = (0.21 * width, 0.05 * height, 0.9 * width, 0.77 * height)
    answer = processor.parse_text(processor.ground_answer([("pond", box)], window), window)
    (found,) = answer.boxes
    assert found.label == "pond"
    half = (width / processor.num_location_bins / 2, height / processor.num_location_bins / 2)
    for got, want, tolerance in zip(found.box, box, half * 2):
        assert abs(got - want) <= tolerance + 1e-9


def test_parsing_known_answers(processor):
    window = (200, 100)
    answer = processor.parse_text(
        "storage tank<loc_5><loc_20><loc_25><loc_60>; "
        "car<loc_50><loc_5><loc_60><loc_30><loc_70><loc_5><loc_80><loc_30></s> tail",
        window,
    )
    assert [b.label for b in answer.boxes] == ["storage tank", "car", "car"]
    assert answer.boxes[0].box == (11.0, 20.5, 51.0, 60.5)
    assert answer.text == "storage tank; car"
    answer = processor.parse_text("the pond left of the road [SEG]; buildings [SEG] and <loc_3> more", window)
    assert [s.label for s in answer.segments] == ["the pond left of the road", "buildings"]
    assert answer.boxes == () and answer.text == "the pond left of the road; buildings and more"
    empty = processor.parse_text("<loc_9><loc_9><loc_9><loc_9> nothing", window)  # no area: dropped
    assert empty.boxes == () and empty.text == "nothing"


def test_tokenizer_save_and_load_round_trip(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    again = RSAProcessor.from_pretrained(tmp_path)
    text = processor.format_prompt(Task.SEGMENT, "Segment the water", answer="water [SEG]")
    assert again.tokenizer(text)["input_ids"] == processor.tokenizer(text)["input_ids"]
    assert again.token_ids == processor.token_ids and again.loc_ids == processor.loc_ids
    assert build_tokenizer(RSA_CORPUS, 512).get_vocab() == processor.tokenizer.get_vocab()


# --- the backend ----------------------------------------------------------------------------------


def run(backend: RSABackend, task: Task, prompt: str = "", images=(WINDOW,), **options) -> BackendResult:
    call = BackendCall(
        task=task, images=list(images), prompt=prompt, options=Options(**{"max_new_tokens": 40, **options})
    )
    return backend.run(call)


def check_detections(result: BackendResult, window: np.ndarray) -> None:
    assert isinstance(result.text, str)
    for det in result.detections:
        assert isinstance(det, Detection) and 0.0 <= det.score <= 1.0
        if det.mask is not None:
            assert det.mask.dtype == bool and det.mask.shape == window.shape[:2]
        if det.box is not None:
            x0, y0, x1, y1 = det.box
            assert 0 <= x0 < x1 <= window.shape[1] and 0 <= y0 < y1 <= window.shape[0]


@pytest.mark.parametrize(
    ("task", "prompt", "images"),
    [
        (Task.CAPTION, "", (WINDOW,)),
        (Task.GROUND, "find the storage tanks", (WINDOW,)),
        (Task.SEGMENT, "segment water", (WINDOW,)),
        (Task.CHANGE, "", (WINDOW, AFTER)),
        (Task.CHAT, "how many buildings are there?", (WINDOW,)),
        (Task.CHAT, "what changed?", (WINDOW, AFTER)),
    ],
)
def test_backend_answers_every_task(backend, task, prompt, images):
    result = run(backend, task, prompt, images)
    check_detections(result, WINDOW)
    if task is Task.CHANGE:
        assert result.text.startswith(("changed (", "unchanged ("))
        assert all(d.kind in (FeatureKind.BOX, FeatureKind.CHANGE) for d in result.detections)


@pytest.fixture
def scripted(tiny_rsa_path, monkeypatch):
    """A backend of its own whose model writes a given answer, with a mask decoder that fills everything."""
    own = RSABackend("scripted", {"path": str(tiny_rsa_path)}, "cpu")
    own.ensure_loaded()
    decoder = own.model.mask_decoder
    with torch.no_grad():
        last_conv = decoder.upsample[-2]
        last_conv.weight.zero_()
        last_conv.bias.fill_(1.0)
        decoder.hyper[-1].weight.zero_()
        decoder.hyper[-1].bias.fill_(1.0)

    generate = own.model.generate

    def write(answer: str) -> RSABackend:  # may be called again with another answer
        ids = own.processor.tokenizer(answer, add_special_tokens=False)["input_ids"]

        def forced(*args, **kwargs):
            return generate(
                *args, logits_processor=LogitsProcessorList([Script(ids, own.processor.token_ids["</s>"])]), **kwargs
            )

        monkeypatch.setattr(own.model, "generate", forced)
        return own

    return write


def test_scripted_ground_maps_bins_to_the_non_square_window(scripted, processor):
    window = (80, 48)
    answer = processor.ground_answer([("storage tank", (8, 4, 30, 20)), ("storage tank", (50, 30, 79, 47))], window)
    result = run(scripted(answer), Task.GROUND, "find the storage tanks")
    assert result.text == "2 x storage tank"
    assert [d.kind for d in result.detections] == [FeatureKind.BOX, FeatureKind.BOX]
    for det, want in zip(result.detections, [(8, 4, 30, 20), (50, 30, 79, 47)]):
        assert det.score == pytest.approx(1.0)
        assert all(abs(g - w) <= 0.5 * 80 / 100 + 1e-9 for g, w in zip(det.box[::2], want[::2]))
        assert all(abs(g - w) <= 0.5 * 48 / 100 + 1e-9 for g, w in zip(det.box[1::2], want[1::2]))


def test_scripted_segment_gives_a_window_sized_mask(scripted):
    result = run(scripted("water bodies [SEG]"), Task.SEGMENT, "segment the water")
    (det,) = result.detections
    assert det.kind is FeatureKind.MASK and det.label == "water bodies"
    assert det.mask.shape == WINDOW.shape[:2] and det.mask.all()
    assert det.box == (0.0, 0.0, 80.0, 48.0)
    assert result.text == "1 x water bodies"


def test_masks_are_cut_at_the_checkpoints_mask_threshold(scripted):
    """Every pixel at probability 0.3: no mask at the default 0.5, the whole window at a calibrated 0.2."""
    backend = scripted("water bodies [SEG]")
    decoder = backend.model.mask_decoder
    channels = decoder.hyper[-1].out_features
    with torch.no_grad():  # each upsampled pixel is GELU(1) in every channel; the query's weights set the logit
        decoder.hyper[-1].bias.fill_(
            math.log(0.3 / 0.7) / (channels * torch.nn.functional.gelu(torch.tensor(1.0)).item())
        )
    assert backend.model.config.mask_threshold == 0.5
    assert run(backend, Task.SEGMENT, "segment the water").text == "nothing found"
    backend.model.config.mask_threshold = 0.2
    (det,) = run(backend, Task.SEGMENT, "segment the water").detections
    assert det.mask.all() and det.score == pytest.approx(0.3, abs=0.01)
    with pytest.raises(StrictDataclassClassValidationError, match="mask_threshold"):
        RSAConfig.from_dict({**backend.model.config.to_dict(), "mask_threshold": 1.5})


def test_class_aware_masks_follow_the_class_heads_map(scripted, monkeypatch):
    """The [SEG] decoder fills the window; the class head puts buildings on the left half and water on
    the right. A class's own name gives its pixels, another noun of a class keeps its mask's pixels of
    that class, and a label naming no class, or class-aware masks off, leaves the mask as decoded."""
    backend = scripted("water bodies [SEG]")
    model = backend.model
    names = ["ground", "buildings", *(f"class {i}" for i in range(2, 10)), "water bodies", "class 11"]
    model.config.pixel_class_loss_weight, model.config.num_aux_classes = 1.0, 12
    model.config.class_names, model.config.class_nouns = (
        names,
        {"buildings": 1, "water bodies": 10, "pond": 10, "house": 1},
    )
    side = model.config.mask_size

    def class_logits(features, detail=None):
        logits = torch.zeros(features.shape[0], 12, side, side)
        logits[:, 1, :, : side // 2] = 5.0
        logits[:, 10, :, side // 2 :] = 5.0
        return logits

    monkeypatch.setattr(model.mask_decoder, "pixel_class_logits", class_logits)
    assert run(backend, Task.SEGMENT, "segment the water").detections[0].mask.all()  # off: as decoded
    model.config.class_aware_masks = True
    (det,) = run(backend, Task.SEGMENT, "segment the water").detections
    assert det.label == "water bodies" and not det.mask[:, :38].any() and det.mask[:, 42:].all()
    assert det.score == pytest.approx(float(torch.softmax(torch.tensor([5.0] + [0.0] * 11), 0)[0]), abs=0.02)
    (det,) = run(scripted("pond [SEG]"), Task.SEGMENT, "segment the pond left of the road").detections
    assert not det.mask[:, :38].any() and det.mask[:, 42:].all() and det.score > 0.9  # the decoder's own score
    (det,) = run(scripted("house [SEG]"), Task.SEGMENT, "segment the largest house").detections
    assert det.mask[:, :38].all() and not det.mask[:, 42:].any()
    assert run(scripted("the thing [SEG]"), Task.SEGMENT, "segment the thing").detections[0].mask.all()
    with pytest.raises(StrictDataclassClassValidationError, match="class_aware_masks and class_aware_boxes need"):
        RSAConfig.from_dict({**model.config.to_dict(), "pixel_class_loss_weight": 0.0})


def test_a_class_mask_bar_takes_the_pixels_where_a_small_class_is_likely_but_not_the_most_likely(scripted, monkeypatch):
    """The class head gives trees a probability of about 0.27 on the left half, where grass is the most
    probable class: "trees [SEG]" is empty (so nothing is drawn) until trees get a bar of 0.2, and a bar
    names a class the model has, with a probability."""
    backend = scripted("trees [SEG]")
    model = backend.model
    names = [
        "ground",
        *(f"class {i}" for i in range(1, 6)),
        "trees",
        "class 7",
        "grass areas",
        *(f"class {i}" for i in range(9, 12)),
    ]
    model.config.pixel_class_loss_weight, model.config.num_aux_classes = 1.0, 12
    model.config.class_names, model.config.class_nouns = names, {"trees": 6, "tree": 6, "grass areas": 8}
    model.config.class_aware_masks = True
    side = model.config.mask_size

    def class_logits(features, detail=None):
        logits = torch.full((features.shape[0], 12, side, side), -9.0)
        logits[:, 8] = 1.0  # grass everywhere ...
        logits[:, 6, :, : side // 2] = 0.5  # ... and on the left trees and ground too: p(trees) ~ 0.27,
        logits[:, 0, :, : side // 2] = 0.6  # p(ground) ~ 0.29, p(grass) ~ 0.44
        return logits

    monkeypatch.setattr(model.mask_decoder, "pixel_class_logits", class_logits)
    assert run(backend, Task.SEGMENT, "segment the trees").detections == []
    model.config.class_mask_bars = {"trees": 0.2}
    (det,) = run(backend, Task.SEGMENT, "segment the trees").detections
    assert det.label == "tree" and det.mask[:, :38].all() and not det.mask[:, 42:].any()  # one object: the left half
    with pytest.raises(StrictDataclassClassValidationError, match="class_mask_bars"):
        RSAConfig.from_dict({**model.config.to_dict(), "class_mask_bars": {"shrubs": 0.2}})
    with pytest.raises(StrictDataclassClassValidationError, match="class_mask_bars"):
        RSAConfig.from_dict({**model.config.to_dict(), "class_mask_bars": {"trees": 0.0}})


def test_a_class_refiner_finds_an_object_smaller_than_a_cell_of_the_class_heads_map(scripted, monkeypatch):
    """The class head says buildings everywhere; a white pond of 4 x 6 pixels lies on a black window
    (smaller than one of the head's cells). A refiner whose correction reads "bright means water" gives
    "water bodies [SEG]" just the pond's pixels; untrained (its correction starts at zero) it serves the
    head's own map, and a refiner needs the class head."""
    backend = scripted("water bodies [SEG]")
    model = backend.model
    names = ["ground", "buildings", *(f"class {i}" for i in range(2, 10)), "water bodies", "class 11"]
    model.config.pixel_class_loss_weight, model.config.num_aux_classes = 1.0, 12
    model.config.class_names, model.config.class_nouns = names, {"buildings": 1, "water bodies": 10}
    model.config.class_aware_masks = True
    side = model.config.mask_size
    assert 96 / side > 4 and 160 / side > 6  # the pond fits inside one cell of the head's map

    def class_logits(features, detail=None):
        logits = torch.zeros(features.shape[0], 12, side, side)
        logits[:, 1] = 5.0
        return logits

    monkeypatch.setattr(model.mask_decoder, "pixel_class_logits", class_logits)
    window = np.zeros((96, 160, 3), dtype=np.uint8)
    window[40:44, 80:86] = 255
    pond = np.zeros((96, 160), dtype=bool)
    pond[40:44, 80:86] = True
    assert run(backend, Task.SEGMENT, "segment the water", images=(window,)).detections == []  # the head alone
    model.config.class_refine_channels, model.config.class_refine_size = 2, 128
    model.class_refiner = RSAClassRefiner(model.config)
    assert (
        run(backend, Task.SEGMENT, "segment the water", images=(window,)).detections == []
    )  # untrained: the head's map
    (det,) = run(scripted("buildings [SEG]"), Task.SEGMENT, "segment the buildings", images=(window,)).detections
    assert det.mask.all()
    refiner = model.class_refiner
    with torch.no_grad():
        refiner.colour.weight.zero_()
        refiner.colour.weight[0, :, 1, 1] = 1.0  # channel 0: r + g + b - 1.5, +1.5 on white, -1.5 on black
        refiner.colour.bias.zero_()
        for conv in (refiner.body[1], refiner.body[3]):  # pass channel 0 through
            conv.weight.zero_()
            conv.weight[0, 0, 1, 1] = 1.0
            conv.bias.zero_()
        refiner.correction.weight[10, 0] = 20.0
        refiner.correction.bias[10] = 0.0  # water wins over the head's buildings (5) where the channel passes 0.25
    (det,) = run(scripted("water bodies [SEG]"), Task.SEGMENT, "segment the water", images=(window,)).detections
    assert det.label == "water bodies"
    assert (det.mask & pond).sum() / (det.mask | pond).sum() > 0.7
    model.class_refiner, model.config.class_refine_channels = None, 0
    with pytest.raises(StrictDataclassClassValidationError, match="class_refine_channels"):
        RSAConfig.from_dict({**model.config.to_dict(), "class_refine_channels": -1})
    with pytest.raises(StrictDataclassClassValidationError, match="class_refine_channels"):
        RSAConfig.from_dict(
            {
                **model.config.to_dict(),
                "class_refine_channels": 8,
                "pixel_class_loss_weight": 0.0,
                "class_aware_masks": False,
            }
        )


def test_class_region_masks_take_the_whole_class_region_the_decoded_mask_lands_on(scripted, monkeypatch):
    """Buildings fill the top-left and bottom-right quarters of the class head's map; the decoder marks a
    small blob inside the bottom-right one. With class_region_masks a referring mask ("house") becomes that
    whole quarter, without it only the blob; a blob on no building gives no mask either way, and a class's
    own name still gives every pixel of the class."""
    backend = scripted("house [SEG]")
    model = backend.model
    model.config.pixel_class_loss_weight, model.config.num_aux_classes = 1.0, 12
    model.config.class_names = ["ground", "buildings", *(f"class {i}" for i in range(2, 12))]
    model.config.class_nouns = {"buildings": 1, "house": 1}
    side = model.config.mask_size
    half = side // 2
    blob = {"at": (half + half // 2, half + half // 2)}

    def class_logits(features, detail=None):
        logits = torch.zeros(features.shape[0], 12, side, side)
        logits[:, 1, :half, :half] = 5.0
        logits[:, 1, half:, half:] = 5.0
        logits[:, 0] = 5.0 - logits[:, 1]
        return logits

    def decoded(seg_states, features, detail=None):
        logits = torch.full((seg_states.shape[0], side, side), -5.0)
        row, col = blob["at"]
        logits[:, row - 1 : row + 1, col - 1 : col + 1] = 5.0
        return logits

    monkeypatch.setattr(model.mask_decoder, "pixel_class_logits", class_logits)
    monkeypatch.setattr(model.mask_decoder, "forward", decoded)
    height, width = WINDOW.shape[:2]
    model.config.class_aware_masks = True
    (only_blob,) = run(backend, Task.SEGMENT, "segment the largest house").detections
    model.config.class_region_masks = True
    (region,) = run(backend, Task.SEGMENT, "segment the largest house").detections
    assert only_blob.mask.sum() < 0.3 * region.mask.sum() and region.score == pytest.approx(only_blob.score, abs=0.05)
    quarter = np.zeros((height, width), bool)
    quarter[height // 2 :, width // 2 :] = True
    assert (region.mask & quarter).sum() >= 0.9 * quarter.sum() and not region.mask[: height // 2 - 2].any()
    assert not region.mask[:, : width // 2 - 2].any()
    blob["at"] = (half // 2, half + half // 2)  # top right: no building there
    assert run(backend, Task.SEGMENT, "segment the largest house").text == "nothing found"
    # the class's name: every object of it, each its own mask (rsa_instances)
    everything = np.logical_or.reduce(
        [d.mask for d in run(scripted("buildings [SEG]"), Task.SEGMENT, "segment the buildings").detections]
    )
    assert (
        everything[: height // 2 - 2, : width // 2 - 2].all() and everything[height // 2 + 2 :, width // 2 + 2 :].all()
    )
    with pytest.raises(StrictDataclassClassValidationError, match="class_region_masks refines class-aware masks"):
        RSAConfig.from_dict({**model.config.to_dict(), "class_aware_masks": False})


def test_class_aware_boxes_snap_to_the_class_region_under_them(scripted, processor, monkeypatch):
    """Buildings fill the top-left and bottom-right quarters of the class head's map: a house box that
    overlaps the top-left one becomes its extent; a box of a class with no region, or of a noun naming
    no class, stays where the model put it."""
    window = (80, 48)
    answer = processor.ground_answer(
        [("house", (4, 4, 16, 20)), ("car", (40, 10, 60, 30)), ("thing", (30, 5, 50, 25)), ("house", (10, 8, 30, 18))],
        window,
    )  # the last house lands on the first's region
    backend = scripted(answer)
    model = backend.model
    model.config.pixel_class_loss_weight, model.config.num_aux_classes = 1.0, 12
    model.config.class_names = [
        "ground",
        "buildings",
        "roads",
        "parking lots",
        "vehicles",
        *(f"class {i}" for i in range(5, 12)),
    ]
    model.config.class_nouns = {"house": 1, "buildings": 1, "car": 4}
    side = model.config.mask_size

    def class_logits(features, detail=None):
        logits = torch.zeros(features.shape[0], 12, side, side)
        logits[:, 1, : side // 2, : side // 2] = 5.0
        logits[:, 1, side // 2 :, side // 2 :] = 5.0
        logits[:, 0] = 5.0 - logits[:, 1]  # ground elsewhere
        return logits

    monkeypatch.setattr(model.mask_decoder, "pixel_class_logits", class_logits)
    unsnapped = [d.box for d in run(backend, Task.GROUND, "find the largest house").detections]
    assert len(unsnapped) == 4
    model.config.class_aware_boxes = True
    house, car, thing = [
        d.box for d in run(backend, Task.GROUND, "find the largest house").detections
    ]  # one box per region
    assert house == pytest.approx((0.0, 0.0, 40.0, 24.0), abs=1.0)
    assert car == unsnapped[1] and thing == unsnapped[2]


def test_region_features_describe_place_size_colour_and_surroundings():
    """Two buildings on an 8 x 8 map: a big red one top left, a small blue one bottom right with a road
    column to its left. Their rows tell where, how big and what colour each is, and what lies beside it."""
    from rs_assistant.engine.models.rsa.regions import BASE_FEATURES, LEVELS, num_region_features, region_features

    classes = torch.zeros(8, 8, dtype=torch.long)
    classes[:4, :4] = 1
    classes[6:, 6:] = 1
    classes[:, 5] = 2  # a road down column 5
    regions = torch.zeros(8, 8, dtype=torch.long)
    regions[:4, :4] = 1
    regions[6:, 6:] = 2
    rgb = torch.zeros(3, 8, 8)
    rgb[0, :4, :4] = 1.0
    rgb[2, 6:, 6:] = 1.0
    pixels = torch.randn(4, 8, 8)
    rows = region_features(
        torch.stack([regions == 1, regions == 2]),
        torch.tensor([0, 1]),
        classes,
        torch.full((8, 8), 0.9),
        pixels,
        rgb,
        num_classes=3,
    )
    assert rows.shape == (2, num_region_features(4, 3))
    (cx, cy, x0, y0, x1, y1, w, h, log_area), (ex, ey, *_rest) = rows[0, :9].tolist(), rows[1, :9].tolist()
    assert (cx, cy, x0, y0, x1, y1, w, h) == pytest.approx((0.25, 0.25, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5))
    assert log_area == pytest.approx(math.log(16 / 64)) and ex > cx and ey > cy
    assert rows[:, 9].tolist() == [0.5, 0.5]  # each is alone at its level: no rank
    assert rows[:, BASE_FEATURES - len(LEVELS) : BASE_FEATURES].tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    same_level = region_features(
        torch.stack([regions == 1, regions == 2]),
        torch.tensor([0, 0]),
        classes,
        torch.full((8, 8), 0.9),
        pixels,
        rgb,
        num_classes=3,
    )
    assert same_level[:, 9].tolist() == [1.0, 0.0] and same_level[:, 10].tolist() == [0.0, 1.0]  # area rank, x rank
    assert rows[0, 13:16].tolist() == [1.0, 0.0, 0.0] and rows[1, 13:16].tolist() == [0.0, 0.0, 1.0]  # mean colour
    assert rows[:, 19].tolist() == pytest.approx([0.9, 0.9])  # the class head's probability
    assert rows[0, BASE_FEATURES : BASE_FEATURES + 4].tolist() == pytest.approx(
        pixels[:, :4, :4].mean(dim=(1, 2)).tolist(), abs=1e-5
    )
    around = rows[:, BASE_FEATURES + 4 :].view(2, 4, 3)  # [region, side (left, right, above, below), class]
    assert around[1, 0, 2] == 1.0 and around[0, 1, 2] == 1.0  # the road: left of the small one, right of the big one
    assert around[1, 2, 2] == 0.0 and around[0, 3, 1] == 0.0  # nothing is of the road class above the small one


@pytest.fixture
def two_buildings(scripted, monkeypatch):
    """A scripted backend whose class head puts buildings in the top-left and bottom-right quarters, with a
    region selector that prefers the easternmost region (it records what it was asked)."""
    from rs_assistant.engine.models.rsa.modeling_rsa import RSARegionSelector

    def make(answer: str):
        backend = scripted(answer)
        model = backend.model
        model.config.pixel_class_loss_weight, model.config.num_aux_classes = 1.0, 12
        model.config.class_names = ["ground", "buildings", *(f"class {i}" for i in range(2, 12))]
        model.config.class_nouns = {"buildings": 1, "house": 1}
        model.config.class_aware_boxes = model.config.class_aware_masks = model.config.class_region_masks = True
        side = model.config.mask_size

        def class_logits(features, detail=None):
            logits = torch.zeros(features.shape[0], 12, side, side)
            logits[:, 1, : side // 2, : side // 2] = 5.0
            logits[:, 1, side // 2 :, side // 2 :] = 5.0
            logits[:, 0] = 5.0 - logits[:, 1]
            return logits

        monkeypatch.setattr(model.mask_decoder, "pixel_class_logits", class_logits)
        model.config.region_selector_dim = 8
        monkeypatch.setattr(model, "region_selector", RSARegionSelector(model.config))
        asked = []

        def easternmost(state, instruction, features):
            asked.append((state.shape, instruction.state.shape, features.shape, instruction.words.shape))
            return features[:, 0]  # the centroid's x

        monkeypatch.setattr(model, "score_regions", easternmost)
        return backend, asked

    return make


def test_region_selector_picks_the_box_and_the_mask_of_a_referring_answer(two_buildings, processor):
    """The model writes one house box on the top-left building and a [SEG] whose decoded mask fills the
    window; the selector (preferring the easternmost region) makes both the bottom-right building, and it
    reads the answer's state with the instruction's mean state and its words (the LM's width; "find the
    easternmost house" is at least three tokens) and one row per candidate: the
    two regions, and both joined (they touch at a corner)."""
    window = (80, 48)
    backend, asked = two_buildings(processor.ground_answer([("house", (4, 4, 16, 20))], window))
    (box,) = run(backend, Task.GROUND, "find the easternmost house").detections
    assert box.box == pytest.approx((40.0, 24.0, 80.0, 48.0), abs=1.0)
    width = backend.model.config.text_config.hidden_size
    assert asked == [((width,), (width,), (3, asked[0][2][1]), (asked[0][3][0], width))] and asked[0][3][0] >= 3
    backend, _ = two_buildings("house [SEG]")
    (mask,) = run(backend, Task.SEGMENT, "segment the easternmost house").detections
    quarter = np.zeros(WINDOW.shape[:2], bool)
    quarter[24:, 40:] = True
    assert (
        (mask.mask & quarter).sum() >= 0.9 * quarter.sum() and not mask.mask[:22].any() and not mask.mask[:, :38].any()
    )


def test_region_selector_leaves_answers_of_several_objects_and_class_names_alone(two_buildings, processor):
    """Two house boxes still snap each to the region under it, and "buildings [SEG]" is still every
    building pixel: the selector only chooses for an answer that names one object."""
    window = (80, 48)
    backend, asked = two_buildings(
        processor.ground_answer([("house", (4, 4, 16, 20)), ("house", (50, 30, 70, 44))], window)
    )
    boxes = sorted(d.box for d in run(backend, Task.GROUND, "find the houses").detections)
    assert boxes == [pytest.approx((0.0, 0.0, 40.0, 24.0), abs=1.0), pytest.approx((40.0, 24.0, 80.0, 48.0), abs=1.0)]
    backend, _ = two_buildings("buildings [SEG]")
    first, second = sorted(run(backend, Task.SEGMENT, "segment the buildings").detections, key=lambda d: d.box)
    assert first.mask[:22, :38].all() and second.mask[26:, 42:].all() and asked == []  # one mask per building


def test_candidates_join_a_broken_building_and_separate_the_roads_of_a_grid():
    """A 32 x 32 class map: a building broken by a one-cell gap is two regions, and also one joined
    candidate; two crossing roads are one region, and also one straight band each; nothing is proposed twice."""
    from rs_assistant.engine.models.rsa.regions import LEVELS, candidate_regions

    building = torch.zeros(32, 32, dtype=torch.bool)
    building[2:8, 2:6] = building[2:8, 7:12] = True  # the gap: column 6
    masks, levels = candidate_regions(building)
    assert levels.tolist() == [0, 0, 1]
    assert masks[2].equal(building) and (masks[0] | masks[1]).equal(building)

    roads = torch.zeros(32, 32, dtype=torch.bool)
    roads[20:23, :] = True  # east-west, 3 cells wide
    roads[:, 9:11] = True  # north-south, 2 cells wide
    masks, levels = candidate_regions(roads)
    assert [LEVELS[i] for i in levels.tolist()] == ["connected", "line", "line"]  # joining adds nothing here
    assert masks[0].equal(roads)
    east_west, north_south = (masks[1], masks[2]) if masks[1][21, 0] else (masks[2], masks[1])
    assert east_west[20:23].all() and not east_west[:20].any() and not east_west[23:].any()
    assert north_south[:, 9:11].all() and not north_south[:, :9].any() and not north_south[:, 11:].any()

    field = torch.zeros(32, 32, dtype=torch.bool)
    field[4:28, 4:28] = True  # a square is not a line, however many cells its diagonals hold
    masks, levels = candidate_regions(field)
    assert levels.tolist() == [0] and masks[0].equal(field)
    assert candidate_regions(torch.zeros(32, 32, dtype=torch.bool))[0].shape == (0, 32, 32)


def test_connected_regions_are_numbered_in_reading_order():
    from rs_assistant.engine.backends.rsa import connected_regions

    inside = torch.zeros(6, 6, dtype=torch.bool)
    inside[0, :3] = inside[1, 2] = True  # one region, joined through (0, 2)
    inside[2:5, 4] = True
    inside[5, 0] = True
    inside[3, 3] = True  # touches the column at (3, 4): the same region
    inside[4, 3 - 1] = True  # diagonal to nothing inside: its own region
    regions = connected_regions(inside)
    assert regions[0, 0] == regions[1, 2] == 1 and regions[2, 4] == regions[3, 3] == 2
    assert regions[4, 2] == 3 and regions[5, 0] == 4 and int(regions.max()) == 4
    assert (regions > 0).equal(inside)


@pytest.mark.parametrize("changed", [True, False])
def test_scripted_change_gives_change_masks_only_when_changed(scripted, changed):
    backend = scripted("two buildings were built. [SEG]")
    with torch.no_grad():
        backend.model.difference.change_head.weight.zero_()
        backend.model.difference.change_head.bias.fill_(6.0 if changed else -6.0)
    result = run(backend, Task.CHANGE, "", (WINDOW, AFTER))
    if changed:
        assert result.text == "changed (100%): two buildings were built."
        (det,) = result.detections
        assert det.kind is FeatureKind.CHANGE and det.label == "change" and det.score > 0.99
        assert det.mask.shape == WINDOW.shape[:2]
    else:  # the head says unchanged: the caption that says otherwise is not given (no candidate agrees)
        assert result.text == "unchanged (0%): two buildings were built."
        assert result.detections == []


def test_the_change_verdict_follows_the_checkpoints_change_threshold(scripted):
    """A head at 30%: unchanged at the default 0.5, changed (with its masks) at a calibrated 0.25."""
    backend = scripted("a road was built. [SEG]")
    with torch.no_grad():
        backend.model.difference.change_head.weight.zero_()
        backend.model.difference.change_head.bias.fill_(math.log(0.3 / 0.7))
    result = run(backend, Task.CHANGE, "", (WINDOW, AFTER))
    assert result.text == "unchanged (30%): a road was built." and result.detections == []
    backend.model.config.change_threshold = 0.25
    result = run(backend, Task.CHANGE, "", (WINDOW, AFTER))
    assert result.text == "changed (30%): a road was built."
    assert [d.kind for d in result.detections] == [FeatureKind.CHANGE]
    with pytest.raises(StrictDataclassClassValidationError, match="change_threshold"):
        RSAConfig.from_dict({**backend.model.config.to_dict(), "change_threshold": 0.0})


def test_a_change_caption_that_contradicts_the_verdict_gives_way_to_one_that_agrees(scripted, monkeypatch):
    """For a model trained to end a change caption with [SEG] exactly when the pair changed
    (``change_seg_marks_changed``), the language model's first choice says "unchanged" (no [SEG]) where the head says
    changed:
    the pair is decoded again by beam search and the best candidate that ends with [SEG] is given,
    with its change mask. With no such candidate only the verdict is given, and the mask comes from
    the per-pixel change head when the model has one."""
    from tests.engine.scripted import Scripts

    backend = scripted("unused")
    model, tokenizer, eos = backend.model, backend.processor.tokenizer, backend.processor.token_ids["</s>"]
    with torch.no_grad():
        model.difference.change_head.weight.zero_()
        model.difference.change_head.bias.fill_(6.0)  # changed (100%)
    generate = type(model).generate.__get__(model)
    calls = []

    def answers(*scripts: str) -> None:
        ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in scripts]

        def forced(*args, **kwargs):
            calls.append(kwargs.get("num_beams", 1))
            return generate(*args, logits_processor=LogitsProcessorList([Scripts(ids, eos)]), **kwargs)

        monkeypatch.setattr(model, "generate", forced)

    answers("the scene is unchanged.", "a road was built. [SEG]")
    result = run(backend, Task.CHANGE, "", (WINDOW, AFTER))  # a model whose captions need not end with [SEG]
    assert result.text == "changed (100%): the scene is unchanged." and result.detections == [] and calls == [1]
    calls.clear()
    model.config.change_seg_marks_changed = True  # as the default recipe trains (and writes) it
    result = run(backend, Task.CHANGE, "", (WINDOW, AFTER))
    assert result.text == "changed (100%): a road was built."
    (det,) = result.detections
    assert (
        det.kind is FeatureKind.CHANGE and det.mask.shape == WINDOW.shape[:2] and det.mask.all()
    )  # the decoder fills all
    assert calls == [1, max(4, model.config.caption_num_beams)]  # greedy, then beams for the one that disagreed

    answers("the scene is unchanged.", "nothing changed.")
    result = run(backend, Task.CHANGE, "", (WINDOW, AFTER))
    assert result.text == "changed (100%)" and result.detections == []  # this tiny model has no per-pixel change head
    encode, side = model.encode_images, model.config.mask_size

    def with_pixel_change_head(pixel_values):  # changed on the left half of the decoder's map only
        visual = encode(pixel_values)
        if visual.change_logits is not None:
            visual.change_pixel_logits = torch.full((len(visual.change_logits), side, side), -6.0)
            visual.change_pixel_logits[:, :, : side // 2] = 6.0
        return visual

    monkeypatch.setattr(model, "encode_images", with_pixel_change_head)
    result = run(backend, Task.CHANGE, "", (WINDOW, AFTER))
    assert result.text == "changed (100%)"
    (det,) = result.detections
    width = WINDOW.shape[1]
    assert (
        det.kind is FeatureKind.CHANGE
        and det.mask[:, : width // 2 - 2].all()
        and not det.mask[:, width // 2 + 2 :].any()
    )

    calls.clear()
    answers("a road was built. [SEG]", "the scene is unchanged.")  # agrees with the head: decoded once
    assert run(backend, Task.CHANGE, "", (WINDOW, AFTER)).text == "changed (100%): a road was built." and calls == [1]


def blob_logits(size: int, blobs: list[tuple[slice, slice, float]]) -> torch.Tensor:
    """Mask logits of -8 everywhere but the given (rows, cols, logit) rectangles."""
    logits = torch.full((size, size), -8.0)
    for rows, cols, value in blobs:
        logits[rows, cols] = value
    return logits


def test_region_box_is_the_extent_of_the_most_probable_connected_region():
    from rs_assistant.engine.backends.rsa import region_box

    # two regions above 0.5 on a 16 x 16 mask; the stronger one (rows 8-11, cols 2-5) wins
    logits = blob_logits(16, [(slice(1, 4), slice(9, 15), 1.0), (slice(8, 12), slice(2, 6), 4.0)])
    box, score = region_box(logits, (64, 32), 0.5)  # window 32 wide, 64 high: 4 px per row, 2 per column
    assert box == pytest.approx((4.0, 32.0, 12.0, 48.0), abs=2.5)
    assert score > 0.9
    # a region touching the peak only at a corner is another region (4-connected growth)
    corner = blob_logits(16, [(slice(8, 12), slice(2, 6), 4.0), (slice(12, 14), slice(6, 9), 4.0)])
    (x0, y0, x1, y1), _ = region_box(corner, (16, 16), 0.5)
    assert x1 <= 6.5 and y1 <= 12.5
    assert region_box(blob_logits(16, []), (16, 16), 0.5) is None


def test_a_box_from_mask_model_reads_each_box_off_the_mask_its_hidden_state_decodes(scripted, processor, monkeypatch):
    """The answer writes two boxes; the decoder's masks put the first elsewhere and leave the second empty,
    so the first box comes from its mask and the second keeps its location bins."""
    window = (80, 48)
    answer = processor.ground_answer([("storage tank", (8, 4, 30, 20)), ("storage tank", (50, 30, 79, 47))], window)
    backend = scripted(answer)
    backend.model.config.box_from_mask = True
    backend.model.config.loc_token_id = processor.loc_ids[0]
    size = backend.model.config.mask_size
    half = size // 2
    queries = []

    def decoded(states, visual, owners):
        queries.append(states.shape[0])
        moved = blob_logits(size, [(slice(half, size), slice(0, half), 5.0)])  # the lower-left quarter
        return torch.stack([moved, blob_logits(size, [])])

    monkeypatch.setattr(backend.model, "predict_masks", decoded)
    result = run(backend, Task.GROUND, "find the storage tanks")
    assert queries == [2]
    first, second = result.detections
    assert first.box == pytest.approx((0.0, 24.0, 40.0, 48.0), abs=1.5) and first.score > 0.95  # bilinear edges
    assert all(abs(g - w) <= 0.5 * 80 / 100 + 1e-9 for g, w in zip(second.box[::2], (50, 79)))
    assert all(abs(g - w) <= 0.5 * 48 / 100 + 1e-9 for g, w in zip(second.box[1::2], (30, 47)))


def test_captions_use_the_checkpoints_beam_search(scripted, monkeypatch):
    backend = scripted("two storage tanks beside a road.")
    seen = []
    generate = backend.model.generate

    def spy(*args, **kwargs):
        seen.append((kwargs.get("num_beams", 1), kwargs.get("length_penalty")))
        return generate(*args, **kwargs)

    monkeypatch.setattr(backend.model, "generate", spy)
    assert run(backend, Task.CAPTION).text == "two storage tanks beside a road."
    backend.model.config.caption_num_beams, backend.model.config.caption_length_penalty = 3, 0.0
    results = backend.run_batch(
        [BackendCall(task=Task.CAPTION, images=[image], options=Options()) for image in (WINDOW, AFTER)]
    )
    assert [r.text for r in results] == ["two storage tanks beside a road."] * 2 and all(
        not r.detections for r in results
    )
    assert seen == [(1, None), (3, 0.0)]  # greedy by default; one beam search for the batch
    with pytest.raises(StrictDataclassClassValidationError, match="caption_num_beams"):
        RSAConfig.from_dict({**backend.model.config.to_dict(), "caption_num_beams": 0})


def test_too_long_prompt_is_refused(backend):
    with pytest.raises(ProtocolError) as err:
        run(backend, Task.CHAT, "how many buildings " * 200)
    assert err.value.code is ErrorCode.PROMPT_TOO_LONG and "context is 256" in err.value.message
    result = run(backend, Task.CAPTION)  # still serving
    assert isinstance(result.text, str)


def test_bad_prompts_and_cancel(backend):
    with pytest.raises(ProtocolError) as err:
        run(backend, Task.GROUND, "")
    assert err.value.code is ErrorCode.INVALID_VALUE and err.value.param == "prompt"
    cancel = threading.Event()
    cancel.set()
    call = BackendCall(task=Task.CAPTION, images=[WINDOW], options=Options(max_new_tokens=50), cancel=cancel)
    with pytest.raises(ProtocolError) as err:
        backend.run(call)
    assert err.value.code is ErrorCode.CANCELLED
    with pytest.raises(ProtocolError) as err:
        run(backend, Task.CLASSIFY, "a, b")
    assert err.value.code is ErrorCode.UNSUPPORTED_TASK


def broken_copy(source: Path, target: Path, how: str) -> Path:
    shutil.copytree(source, target)
    if how == "no weights":
        (target / "model.safetensors").unlink()
    elif how == "corrupt weights":
        (target / "model.safetensors").write_bytes(b"\x00not a safetensors file" * 10)
    elif how == "wider model":
        config = json.loads((target / "config.json").read_text())
        config["text_config"]["hidden_size"] = 48
        (target / "config.json").write_text(json.dumps(config))
    elif how == "fewer layers":
        config = json.loads((target / "config.json").read_text())
        config["text_config"]["num_hidden_layers"] = 3
        config["text_config"].pop("layer_types", None)
        (target / "config.json").write_text(json.dumps(config))
    elif how == "processor mismatch":
        settings = json.loads((target / "processor_config.json").read_text())
        settings["num_image_tokens"] = 64
        (target / "processor_config.json").write_text(json.dumps(settings))
    elif how == "no tokenizer":
        (target / "tokenizer.json").unlink()
    elif how == "not rsa":
        config = json.loads((target / "config.json").read_text())
        config["model_type"] = "llava"
        (target / "config.json").write_text(json.dumps(config))
    return target


@pytest.mark.parametrize(
    "how",
    [
        "missing",
        "no weights",
        "corrupt weights",
        "wider model",
        "fewer layers",
        "processor mismatch",
        "no tokenizer",
        "not rsa",
    ],
)
def test_bad_folders_fail_to_load_naming_the_folder(tiny_rsa_path, tmp_path, how):
    folder = tmp_path / "missing" if how == "missing" else broken_copy(tiny_rsa_path, tmp_path / "rsa", how)
    broken = RSABackend("broken", {"path": str(folder)}, "cpu")
    with pytest.raises(ProtocolError) as err:
        broken.ensure_loaded()
    assert err.value.code is ErrorCode.MODEL_LOAD_FAILED
    assert str(folder) in err.value.message
    cause = {
        "missing": "does not exist",
        "no weights": "has no weights",
        "corrupt weights": "SafetensorError",
        "wider model": "config.json does not match the weights (shape mismatch",
        "fewer layers": "config.json does not match the weights (weights missing from the file",
        "processor mismatch": "image tokens 64 (model: 4)",
        "no tokenizer": "has no tokenizer",
        "not rsa": "holds a llava checkpoint",
    }[how]
    assert cause in err.value.message


# --- the shipped size -----------------------------------------------------------------------------


def test_default_config_fits_25_mb_in_fp16_and_captions_quickly():
    config = load_named_config("default")
    torch.manual_seed(0)
    model = RSAForConditionalGeneration(config).eval()
    params = sum(p.numel() for p in model.parameters())
    parts = {
        name: sum(p.numel() for p in getattr(model, name).parameters())
        for name in ("vision_tower", "projector", "difference", "delta_projector", "language_model", "mask_decoder")
    }
    print(f"default: {params / 1e6:.2f} M parameters, {2 * params / 1e6:.1f} MB in fp16; {parts}")
    assert 2 * params <= 25e6
    prompt = [1, *[config.image_token_id] * config.num_image_tokens, 4, 9, 100, 101, 102, 5]
    input_ids = torch.tensor([prompt])
    pixels = torch.randn(1, 3, config.vision_config.image_size, config.vision_config.image_size)
    with torch.inference_mode():
        model.generate(input_ids, pixel_values=pixels, max_new_tokens=2, do_sample=False)
        start = time.perf_counter()
        out = model.generate(input_ids, pixel_values=pixels, max_new_tokens=24, min_new_tokens=24, do_sample=False)
        elapsed = time.perf_counter() - start
    print(f"default: {out.shape[1]} caption tokens in {elapsed * 1000:.0f} ms on {torch.get_num_threads()} threads")


def test_pretrained_parts_and_an_extended_llm_tokenizer(tmp_path):
    """large.json's path: a CLIP and an LLM from local folders, the LLM's tokenizer extended with RSA's tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import CLIPVisionModel, PreTrainedTokenizerFast, Qwen2ForCausalLM

    from rs_assistant.engine.models.rsa import extend_tokenizer

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(
        RSA_CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False)
    )
    llm_tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>")
    config = load_named_config("tiny")
    config.freeze_vision = config.freeze_llm = True
    torch.manual_seed(0)
    vision = CLIPVisionModel(config.vision_config)
    vision.save_pretrained(tmp_path / "clip")
    text_config = config.text_config.__class__(**{**config.text_config.to_dict(), "vocab_size": len(llm_tokenizer)})
    llm = Qwen2ForCausalLM(text_config)
    llm.save_pretrained(tmp_path / "llm")

    tokenizer = extend_tokenizer(llm_tokenizer, config.num_location_bins)
    assert tokenizer.eos_token == "</s>" and tokenizer.pad_token == "<pad>"
    config.bind_tokenizer(tokenizer)
    assert config.text_config.vocab_size >= len(tokenizer) > llm.config.vocab_size  # the LLM's embeddings must grow
    config.vision_pretrained_path, config.text_pretrained_path = str(tmp_path / "clip"), str(tmp_path / "llm")
    model = RSAForConditionalGeneration.from_pretrained_parts(config)

    assert all(torch.equal(v, model.vision_tower.state_dict()[k]) for k, v in vision.state_dict().items())
    layers = {k: v for k, v in llm.state_dict().items() if ".layers." in k}
    assert all(torch.equal(v, model.language_model.state_dict()[k]) for k, v in layers.items())
    embeddings = model.get_input_embeddings().weight
    assert torch.equal(embeddings[: llm.config.vocab_size], llm.get_input_embeddings().weight)
    assert embeddings.requires_grad and not any(p.requires_grad for p in model.vision_tower.parameters())
    processor = RSAProcessor.for_model(tokenizer, config)
    batch = processor(
        [processor.format_prompt(Task.GROUND, "find tanks", answer="tank<loc_1><loc_2><loc_3><loc_4>")],
        [WINDOW],
        return_labels=True,
    )
    assert torch.isfinite(model(**batch).loss)


def test_conv_stem_and_mask_detail_shape_the_masks(model, processor):
    """With ``vision_stem = "conv"`` the ViT's patch embedding is a conv stem; with ``mask_detail``
    the masks read its 1/4-resolution features, so a change in fine image detail moves them."""
    config = RSAConfig.from_dict(
        {**model.config.to_dict(), "vision_stem": "conv", "mask_detail": True, "mask_upsample_steps": 1}
    )
    torch.manual_seed(0)
    stemmed = RSAForConditionalGeneration(config)
    assert stemmed.vision_tower.embeddings.patch_embedding.weight.shape[0] == config.vision_config.hidden_size
    stemmed.train()
    out = stemmed(**samples(processor))
    assert torch.isfinite(out.loss) and out.mask_logits.shape == (1, config.mask_size, config.mask_size)
    out.loss.backward()
    early = stemmed.vision_tower.embeddings.patch_embedding.early
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in early.parameters())
    assert stemmed.mask_decoder.detail_proj.weight.grad.abs().sum() > 0
    stemmed.eval()
    pixels = samples(processor)["pixel_values"][2:3]
    visual = stemmed.encode_images(pixels)
    query = torch.randn(1, config.text_config.hidden_size)
    masks = stemmed.predict_masks(query, visual, torch.tensor([0]))
    visual.mask_detail = visual.mask_detail + 1.0
    assert not torch.allclose(masks, stemmed.predict_masks(query, visual, torch.tensor([0])))
    pair = stemmed.encode_images(torch.stack([pixels[0], pixels[0]])[None])
    assert torch.allclose(pair.mask_detail, torch.zeros_like(pair.mask_detail))  # same image twice: no difference
    with pytest.raises(StrictDataclassClassValidationError, match="mask_detail needs vision_stem 'conv'"):
        RSAConfig.from_dict({**model.config.to_dict(), "mask_detail": True, "mask_upsample_steps": 1})


def test_dense_change_head_scores_patches_and_learns_where_changes_are(model, processor):
    """``change_pooling = "dense"``: the verdict is the highest patch score, and with
    ``change_dense_loss_weight`` the patch scores are trained against the change mask."""
    config = RSAConfig.from_dict({**model.config.to_dict(), "change_pooling": "dense", "change_dense_loss_weight": 1.0})
    torch.manual_seed(0)
    dense = RSAForConditionalGeneration(config)
    batch = pair_batch(processor)
    batch["change_targets"] = batch["seg_targets"]  # the changed pair's mask; the unchanged pair's is empty
    optimizer = torch.optim.AdamW(dense.difference.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        out = dense(**batch)
        first = first if first is not None else out.change_dense_loss.item()
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert out.change_dense_loss.item() < 0.5 * first
    visual = dense.encode_images(batch["pixel_values"])
    assert visual.change_patch_logits.shape == (2, config.grid_size**2)
    assert torch.allclose(visual.change_logits, visual.change_patch_logits.max(dim=1).values)
    changed_at = visual.change_patch_logits[0].reshape(config.grid_size, config.grid_size)
    assert changed_at[0, 0] > changed_at[-1, -1]  # the target covers the top-left quarter
    with pytest.raises(StrictDataclassClassValidationError, match="change_pooling 'dense'"):
        RSAConfig.from_dict({**model.config.to_dict(), "change_dense_loss_weight": 1.0})
