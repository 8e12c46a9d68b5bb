"""The Synthetic Earth: seeded, georeferenced aerial-looking scenes with exact ground truth.

    python -m training.data.synthetic --out DIR --split train --count N --size 512 [--pairs M]

Function API for training code that wants arrays rather than files::

    scene = generate_scene(seed, size=512)          # Scene: image, class/instance maps, objects, text
    pair = generate_pair(seed, size=512)            # ScenePair: before, after, change map, captions

See README.md in this folder for what is generated and how it is laid out on disk.
"""

from training.data.synthetic.annotations import (
    Change,
    ChangeKind,
    QAPair,
    ReferringExpression,
    Scene,
    SceneObject,
    ScenePair,
)
from training.data.synthetic.change import generate_pair
from training.data.synthetic.classes import CLASSES, ObjectClass
from training.data.synthetic.scene import generate_scene
from training.data.synthetic.splits import SPLITS, split_seeds

__all__ = [
    "CLASSES",
    "SPLITS",
    "Change",
    "ChangeKind",
    "ObjectClass",
    "QAPair",
    "ReferringExpression",
    "Scene",
    "SceneObject",
    "ScenePair",
    "generate_pair",
    "generate_scene",
    "split_seeds",
]
