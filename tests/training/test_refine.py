"""The class refiner's training stage (training/recipes/default/refine.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rs_assistant.engine.backends.rsa import RSABackend
from rs_assistant.engine.models.rsa import RSAForConditionalGeneration, load_named_config
from rs_assistant.engine.models.rsa.modeling_rsa import RSAClassRefiner
from tests.training.rsa_recipes import write_tiny_rsa
from training.data.synthetic import CLASSES
from training.data.synthetic.classes import class_vocabulary
from training.recipes.default import refine as stage


def _config(channels: int = 8, side: int = 32):
    config = load_named_config("tiny")
    config.pixel_class_loss_weight, config.num_aux_classes = 1.0, len(CLASSES)
    config.class_names, config.class_nouns = class_vocabulary([("house", 1), ("pond", 10)])
    config.class_refine_channels, config.class_refine_size = channels, side
    return config


def _examples(config, count: int, seed: int) -> list[stage.Example]:
    """Grass everywhere in the head's map; on the ground, vehicles (class 4): bright 2 x 2 squares of a
    64-pixel window, far smaller than a cell of the 16-cell map (4 x 4 pixels), so the head cannot draw
    them and the colours can."""
    generator = torch.Generator().manual_seed(seed)
    side, grid, classes = config.class_refine_size, config.mask_size, config.num_aux_classes
    found = []
    for _ in range(count):
        class_map = torch.full((64, 64), 8, dtype=torch.uint8)
        for _ in range(4):
            y, x = (int(v) * 2 for v in torch.randint(0, 31, (2,), generator=generator))
            class_map[y : y + 2, x : x + 2] = 4
        logits = torch.zeros(classes, grid, grid)
        logits[8] = 3.0
        pixels = torch.randn(config.mask_decoder_dim >> config.mask_upsample_steps, grid, grid, generator=generator)
        grey = torch.where(class_map == 4, 230, 60).to(torch.uint8)
        rgb = torch.nn.functional.interpolate(grey[None, None].float(), size=(side, side), mode="area")[0].expand(
            3, -1, -1
        )
        found.append(stage.Example(logits.half(), pixels.half(), rgb.round().to(torch.uint8), class_map))
    return found


def test_soft_targets_are_each_classes_share_of_every_cell():
    class_map = torch.zeros(1, 4, 4, dtype=torch.uint8)
    class_map[0, :2, :2] = 2
    class_map[0, 2, 2] = 1
    targets = stage.soft_targets(class_map, 3, 2)
    assert targets.shape == (1, 3, 2, 2)
    assert torch.allclose(targets.sum(dim=1), torch.ones(1, 2, 2))
    assert targets[0, 2, 0, 0] == 1.0 and targets[0, 1, 1, 1] == 0.25 and targets[0, 0, 1, 1] == 0.75


def test_class_weights_count_a_rare_class_more_and_average_one_over_the_pixels():
    config = _config()
    examples = _examples(config, 3, seed=0)
    weights = stage.class_weights(examples, config.num_aux_classes, 0.5)
    pixels = torch.bincount(
        torch.stack([e.class_map for e in examples]).flatten().long(), minlength=config.num_aux_classes
    )
    assert weights[4] > 3 * weights[8] and weights[0] == 0.0  # vehicles are 1/16 of the pixels, class 0 absent
    assert float((weights * pixels).sum() / pixels.sum()) == pytest.approx(1.0)
    assert torch.equal(stage.class_weights(examples, config.num_aux_classes, 0.0)[[4, 8]], torch.ones(2))


def test_fit_learns_objects_smaller_than_a_cell_of_the_class_heads_map():
    config = _config()
    torch.manual_seed(0)
    refiner = RSAClassRefiner(config)
    held_out = _examples(config, 8, seed=1)
    names = config.class_names
    untrained = stage.class_ious(refiner, held_out, names)
    head = stage.class_ious(None, held_out, names)
    assert head["vehicles"] == 0.0 and untrained["vehicles"] == 0.0  # a zero correction serves the head's map
    losses = stage.fit(refiner, _examples(config, 64, seed=0), epochs=20, lr=1e-2)
    refined = stage.class_ious(refiner, held_out, names)
    assert losses[-1] < 0.1 * losses[0]
    assert (
        refined["vehicles"] > 0.4 and refined["grass areas"] > 0.95
    )  # (a one-cell peak upsampled: not a whole square)


def test_fit_refuses_no_examples():
    with pytest.raises(ValueError, match="no examples"):
        stage.fit(RSAClassRefiner(_config()), [])


def test_train_refiner_writes_a_folder_the_engine_serves(tmp_path: Path):
    """On a tiny random model: the examples come from real scenes, the folder gets the refiner and its
    config, and the rsa backend loads it and draws its class map with it."""
    source, out = tmp_path / "rsa", tmp_path / "with-refiner"
    write_tiny_rsa(source, _config(channels=0), ["find the largest house", "segment the pond", "house [SEG]"])
    results = stage.train_refiner(
        source, out, scenes_count=2, val_count=1, epochs=1, channels=4, side=48, size=96, workers=1, threads=1
    )
    assert results["scenes"] == 2 and results["final_loss"] > 0
    assert set(results["val_refined_iou"]) == set(results["val_head_iou"]) and "mean" in results["val_head_iou"]
    backend = RSABackend("refined", {"path": str(out)}, "cpu")
    backend.ensure_loaded()
    model = backend.model
    assert (model.config.class_refine_channels, model.config.class_refine_size) == (4, 48)
    assert model.class_refiner is not None and float(model.class_refiner.correction.weight.detach().abs().sum()) > 0
    assert RSAForConditionalGeneration.from_pretrained(source).class_refiner is None
    again = tmp_path / "refined-again"  # the stage replaces a refiner of another width
    stage.train_refiner(
        out, again, scenes_count=1, val_count=0, epochs=1, channels=6, side=32, size=96, workers=1, threads=1
    )
    assert RSAForConditionalGeneration.from_pretrained(again).class_refiner.correction.in_channels == 6
