"""The region selector's training stage (training/recipes/default/selector.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rs_assistant.engine.backends.rsa import RSABackend
from rs_assistant.engine.models.rsa import load_named_config
from rs_assistant.engine.models.rsa.modeling_rsa import RSARegionSelector
from rs_assistant.engine.models.rsa.regions import num_region_features
from tests.training.rsa_recipes import write_tiny_rsa
from training.data.synthetic import CLASSES
from training.data.synthetic.classes import class_vocabulary
from training.recipes.default import selector as stage


def _config(dim: int = 16):
    config = load_named_config("tiny")
    config.pixel_class_loss_weight, config.num_aux_classes = 1.0, len(CLASSES)
    config.class_names, config.class_nouns = class_vocabulary([("house", 1), ("pond", 10), ("warehouse", 1)])
    config.region_selector_dim = dim
    return config


def _examples(count: int, features: int, query: int, seed: int, said_by: str = "query") -> list[stage.Example]:
    """Half the examples ask for the region with the largest first feature, half for the smallest. With
    ``said_by="query"`` the query says which by the sign of its first entry; with ``"words"`` only one
    word among two fillers does (a random word embedding per meaning), and the query is the same for all."""
    generator = torch.Generator().manual_seed(seed)
    width = query // 2
    meaning = {
        True: torch.randn(width, generator=torch.Generator().manual_seed(7)),
        False: torch.randn(width, generator=torch.Generator().manual_seed(8)),
    }
    found = []
    for i in range(count):
        rows = torch.zeros(int(torch.randint(2, 7, (1,), generator=generator)), features)
        rows[:, :4] = torch.randn(len(rows), 4, generator=generator)  # the rest are constant, as unused features are
        largest = bool(i % 2)
        ask, words = torch.zeros(query), torch.zeros(3, width)
        if said_by == "query":
            ask[0] = 1.0 if largest else -1.0
        else:
            words = torch.randn(3, width, generator=generator) * 0.1
            words[int(torch.randint(0, 3, (1,), generator=generator))] = meaning[largest]
        target = int(rows[:, 0].argmax()) if largest else int(rows[:, 0].argmin())
        ious = torch.zeros(len(rows))
        ious[target] = 0.8
        found.append(stage.Example("ground", "largest" if largest else "smallest", ask, rows, ious, words))
    return found


@pytest.mark.parametrize("said_by", ["query", "words"])
def test_fit_learns_a_choice_that_depends_on_the_query(said_by):
    """What is asked for reaches the selector through the answer's and the turn's states (query) and
    through any one word of the instruction (words)."""
    config = _config()
    width = num_region_features(config.mask_decoder_dim >> config.mask_upsample_steps, config.num_aux_classes)
    train = _examples(300, width, 2 * config.text_config.hidden_size, seed=0, said_by=said_by)
    held_out = _examples(200, width, 2 * config.text_config.hidden_size, seed=1, said_by=said_by)
    torch.manual_seed(0)
    selector = RSARegionSelector(config)
    before = stage.accuracy(selector, held_out)["ground_acc@0.5"]
    losses = stage.fit(selector, train, epochs=10, lr=1e-2)
    after = stage.accuracy(selector, held_out)
    assert losses[-1] < 0.5 * losses[0]
    assert after["ground_acc@0.5"] >= 0.9 > before + 0.3
    assert after["best_ground_acc@0.5"] == 1.0


def test_fit_refuses_examples_without_a_matching_region():
    config = _config()
    example = stage.Example(
        "segment", "only", torch.zeros(64), torch.zeros(3, 8), torch.tensor([0.1, 0.0, 0.2]), torch.zeros(2, 32)
    )
    assert not example.usable
    with pytest.raises(ValueError, match="no example has a candidate region"):
        stage.fit(RSARegionSelector(config), [example])


def test_train_selector_writes_a_folder_the_engine_serves(tmp_path: Path, monkeypatch):
    """On a tiny random model (a random class head still makes regions): the examples come from real
    scenes, the folder gets the selector and its config, and the rsa backend loads and uses it."""
    source, out = tmp_path / "rsa", tmp_path / "with-selector"
    write_tiny_rsa(
        source, _config(dim=0), ["find the largest house", "segment the pond left of the road", "house [SEG]"]
    )
    monkeypatch.setattr(stage, "MIN_TARGET_IOU", 0.0)  # a random class head rarely matches an object
    results = stage.train_selector(source, out, scenes_count=2, val_count=1, epochs=1, dim=16, size=128, workers=1)
    assert results["examples"] > 0 and 0 <= results["val_ground_acc@0.5"] <= results["val_best_ground_acc@0.5"]
    backend = RSABackend("selected", {"path": str(out)}, "cpu")
    backend.ensure_loaded()
    assert backend.model.config.region_selector_dim == 16 and backend.model.region_selector is not None
    assert float(backend.model.region_selector.feature_std.min()) > 0
    assert not (source / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()  # noqa: SIM201
