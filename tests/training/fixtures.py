"""Tiny copies of the public data sets, written in their exact published layouts.

Each ``write_*`` function writes 3-6 samples under ``root`` (images of a few pixels, drawn with Pillow)
and returns the data set's root folder. The values written are the constants here, so tests can
check what a loader returns against numbers worked out by hand. Every record has the fields, nesting
and value types of a real record of that data set (the source each was checked against is named in
docs/training.md, "Data formats"); only the values are made up.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

RED, GREEN, BLUE, GREY = (255, 0, 0), (0, 255, 0), (0, 0, 255), (128, 128, 128)


def write_image(path: Path, size: tuple[int, int] = (8, 8), colour: tuple[int, int, int] = GREY) -> Path:
    """A flat-coloured RGB image; the format follows the extension (.jpg, .png, .tif)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def write_json(path: Path, document: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1), encoding="utf-8")
    return path


def _sentence(raw: str, imgid: int, sentid: int) -> dict:
    """A Karpathy sentence as RSICD's and LEVIR-CC's files have it: lower-cased tokens without
    punctuation, the raw text as written (RSICD: capitalised with a full stop; LEVIR-CC: " ... .")."""
    return {"tokens": raw.lower().replace(".", " ").split(), "raw": raw, "imgid": imgid, "sentid": sentid}


# --- Karpathy dataset_*.json (RSICD, UCM-Captions, Sydney-Captions, RSITMD) --------------------

KARPATHY_SPLITS = ("train", "train", "train", "val", "test")


def write_karpathy(
    root: Path,
    name: str = "rsicd",
    image_dir: str = "RSICD_images",
    ext: str = ".jpg",
    splits: tuple[str, ...] = KARPATHY_SPLITS,
) -> Path:
    """``dataset_<name>.json`` with one image per entry of ``splits``, two sentences each."""
    images = []
    for i, split in enumerate(splits):
        filename = f"scene_{i + 1}{ext}"
        write_image(root / image_dir / filename, colour=(40 * i, 0, 0))
        images.append(  # dataset_rsicd.json's key order: filename, imgid, sentences, split, sentids
            {
                "filename": filename,
                "imgid": i,
                "sentences": [
                    _sentence(f"there are {i + 1} planes .", i, 2 * i),
                    _sentence(f" Scene {i + 1} has a runway . ", i, 2 * i + 1),
                ],
                "split": split,
                "sentids": [2 * i, 2 * i + 1],
            }
        )
    # UCM-Captions and Sydney-Captions are released as dataset.json; RSICD and RSITMD as dataset_<name>.json
    annotation = "dataset.json" if name in ("ucm", "sydney") else f"dataset_{name}.json"
    write_json(root / annotation, {"images": images, "dataset": name})
    return root


# --- LEVIR-CC and SECOND-CC --------------------------------------------------------------------

LEVIR_PAIRS = (
    ("train", "train_000001.png", 1),
    ("train", "train_000002.png", 0),
    ("val", "val_000001.png", 1),
    ("test", "test_000001.png", 0),
)


def write_levir_cc(root: Path) -> Path:
    """``LevirCCcaptions.json`` and ``images/<split>/{A,B}/``: A red, B blue."""
    images = []
    for i, (split, filename, flag) in enumerate(LEVIR_PAIRS):
        write_image(root / "images" / split / "A" / filename, colour=RED)
        write_image(root / "images" / split / "B" / filename, colour=BLUE)
        raws = (
            [" a road is built .", " many houses appear ."]
            if flag
            else [" there is no difference .", " the scene is the same as before ."]
        )
        images.append(
            {
                "filepath": split,
                "filename": filename,
                "imgid": i,
                "split": split,
                "changeflag": flag,
                "sentids": [2 * i, 2 * i + 1],
                "sentences": [_sentence(raw, i, 2 * i + j) for j, raw in enumerate(raws)],
            }
        )
    write_json(root / "LevirCCcaptions.json", {"images": images})
    return root


# (split, file, captions): SECOND-CC-AUG.json has no changeflag; MModalCC's evaluation calls a pair
# unchanged when its *second* sentence is a "no change" sentence, so 00002's first sentence is not one.
SECOND_PAIRS = (
    ("train", "00001.png", (" the low vegetation turned into buildings .", " buildings replaced the low vegetation .")),
    ("val", "00002.png", (" the two images look alike .", " almost nothing is changed .")),
    ("test", "00003.png", (" a playground is built .", " the water area becomes a playground .")),
)


def write_second_cc(root: Path) -> Path:
    """``SECOND-CC-AUG.json`` (Karpathy fields, no changeflag) and ``<split>/rgb/{A,B}/``, ``<split>/sem/{A,B}/``."""
    images = []
    for i, (split, filename, raws) in enumerate(SECOND_PAIRS):
        for folder, colour in (("rgb/A", RED), ("rgb/B", BLUE), ("sem/A", GREEN), ("sem/B", GREY)):
            write_image(root / split / folder / filename, colour=colour)
        images.append(
            {
                "filename": filename,
                "imgid": i,
                "sentences": [_sentence(raw, i, len(raws) * i + j) for j, raw in enumerate(raws)],
                "split": split,
                "sentids": [len(raws) * i + j for j in range(len(raws))],
            }
        )
    write_json(root / "SECOND-CC-AUG.json", {"images": images})
    return root


# --- DIOR-RSVG ---------------------------------------------------------------------------------

# (xml file, image file, [(name, (xmin, ymin, xmax, ymax), description)]); object indices run
# 0..4 over the files in name order: 00001 (0, 1), 00002 (2), 00003 (3, 4).
DIOR_OBJECTS = (
    (
        "00001",
        [
            ("golffield", (133, 237, 684, 672), "A green and brown golf field"),
            ("vehicle", (10, 20, 30, 40), "the vehicle at the top left"),
        ],
    ),
    ("00002", [("airplane", (100, 200, 300, 400), "an airplane in the middle")]),
    (
        "00003",
        [
            ("storagetank", (5, 6, 7, 8), "the small storage tank"),
            ("ship", (50, 60, 150, 160), "a ship near the harbor"),
        ],
    ),
)
DIOR_SPLITS = {"train": [0, 2, 4], "val": [1], "test": [3]}


def dior_xml(filename: str, objects: list[tuple[str, tuple[int, ...], str]]) -> str:
    parts = [
        f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<annotation>\n  <filename>{filename}</filename>'
        f"\n  <source>\n    <database>DIOR</database>\n  </source>\n  <size>\n    <width>800</width>\n"
        f"    <height>800</height>\n    <depth>3</depth>\n  </size>\n  <segmented>0</segmented>"
    ]
    for name, (x0, y0, x1, y1), text in objects:
        parts.append(
            f"  <object>\n    <name>{name}</name>\n    <pose>Unspecified</pose>\n    <bndbox>\n"
            f"      <xmin>{x0}</xmin>\n      <ymin>{y0}</ymin>\n      <xmax>{x1}</xmax>\n"
            f"      <ymax>{y1}</ymax>\n    </bndbox>\n    <description>{text}</description>\n  </object>"
        )
    return "\n".join(parts) + "\n</annotation>"


def write_dior_rsvg(root: Path) -> Path:
    """``Annotations/*.xml`` (written out of name order), ``JPEGImages/*.jpg``, ``{train,val,test}.txt``."""
    for stem, objects in reversed(DIOR_OBJECTS):
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{stem}.xml").write_text(dior_xml(f"{stem}.jpg", objects), encoding="utf-8")
        write_image(root / "JPEGImages" / f"{stem}.jpg", size=(16, 16))
    for split, indices in DIOR_SPLITS.items():
        (root / f"{split}.txt").write_text("".join(f"{i}\n" for i in indices), encoding="utf-8")
    return root


# --- RSVQA LR / HR -----------------------------------------------------------------------------

# As AutomaticDB/Splits.py writes a split: every id of the whole data base, position = id; what
# belongs to another split is a placeholder {"id": N, "active": False} with no other field. Here image
# 0 and its questions 0-1 (answers 0-1) belong to another split; images 1 and 2 are this split's.
# image id -> active; question id -> (image id, type, question, answer ids); answer id -> (question id, answer)
RSVQA_IMAGES = {0: False, 1: True, 2: True}
RSVQA_QUESTIONS = {
    0: None,
    1: None,
    2: (1, "presence", "Is there a road?", [2]),
    3: (1, "count", "How many buildings are there?", [3]),
    4: (1, "comp", "Are there more roads than buildings?", [4]),
    5: (2, "rural_urban", "Is it a rural or an urban area?", [5]),
}
RSVQA_ANSWERS = {0: None, 1: None, 2: (2, "yes"), 3: (3, "between 11 and 100"), 4: (4, "no"), 5: (5, "rural")}


def write_rsvqa(root: Path, variant: str = "LR", split: str = "train") -> Path:
    prefix, image_dir = {"LR": ("LR", "Images_LR"), "HR": ("USGS", "Data")}[variant]
    images = [
        {
            "id": i,
            "date_added": 1583000000,
            "original_name": f"S2_{i}.tif",
            "sensor": "Sentinel-2",
            "people_id": 0,
            "type": "Visible",
            "questions_ids": [q for q, v in RSVQA_QUESTIONS.items() if v and v[0] == i],
            "active": True,
        }
        if active
        else {"id": i, "active": False}
        for i, active in RSVQA_IMAGES.items()
    ]
    questions = [
        {
            "id": q,
            "date_added": 1583000000,
            "img_id": v[0],
            "people_id": 0,
            "type": v[1],
            "question": v[2],
            "answers_ids": v[3],
            "active": True,
        }
        if v
        else {"id": q, "active": False}
        for q, v in RSVQA_QUESTIONS.items()
    ]
    answers = [
        {"id": a, "date_added": 1583000000, "question_id": v[0], "people_id": 0, "answer": v[1], "active": True}
        if v
        else {"id": a, "active": False}
        for a, v in RSVQA_ANSWERS.items()
    ]
    write_json(root / f"{prefix}_split_{split}_images.json", {"images": images})
    write_json(root / f"{prefix}_split_{split}_questions.json", {"questions": questions})
    write_json(root / f"{prefix}_split_{split}_answers.json", {"answers": answers})
    for i, active in RSVQA_IMAGES.items():
        if active:
            write_image(root / image_dir / f"{i}.tif", size=(16, 16))
    return root


# --- GeoChat-Instruct and ChangeChat-105k (LLaVA conversation JSON) ----------------------------

GEOCHAT_SIZE = (200, 100)  # width, height: x and y scale differently (x2, x1)
GEOCHAT_RECORDS = [
    {
        "id": "P0003_0004",
        "image": "P0003_0004.png",
        "conversations": [
            {"from": "human", "value": "<image>\n[refer] Where is the white plane at the top?"},
            {"from": "gpt", "value": "{<10><20><50><60>|<30>}"},
        ],
    },
    {
        "id": "P0010_0001",
        "image": "P0010_0001.png",
        "conversations": [
            {"from": "human", "value": "<image>\n[grounding] Describe the image in detail."},
            {"from": "gpt", "value": "Two <p>ships</p> {<0><0><25><50>|0} {<75><50><100><100>} are docked."},
            {"from": "human", "value": "[vqa] How many ships are there?"},
            {"from": "gpt", "value": "2"},
        ],
    },
    {
        "id": "P0020_0002",
        "image": "P0020_0002.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is the main land use?"},
            {"from": "gpt", "value": "The image shows farmland."},
        ],
    },
]


def write_geochat(root: Path) -> Path:
    """``GeoChat_Instruct.json`` and ``images/`` of 200 x 100 PNGs; returns the JSON's path."""
    for record in GEOCHAT_RECORDS:
        write_image(root / "images" / record["image"], size=GEOCHAT_SIZE)
    return write_json(root / "GeoChat_Instruct.json", GEOCHAT_RECORDS)


# DeltaVLM's changechat_105k_train.json records: integer id, the pair as a two-element "image" list
# relative to the LEVIR-CC image folder, changeflag, "<image> <image>" opening the first human turn.
CHANGECHAT_RECORDS = [
    {
        "id": 0,
        "image": ["train/A/train_000001.png", "train/B/train_000001.png"],
        "changeflag": 1,
        "conversations": [
            {"from": "human", "value": "<image> <image> Please briefly describe the changes in these two images."},
            {"from": "gpt", "value": "Some buildings are constructed along the road."},
        ],
    },
    {
        "id": 1,
        "image": ["train/A/train_000001.png", "train/B/train_000001.png"],
        "changeflag": 1,
        "conversations": [
            {"from": "human", "value": "<image> <image> Have any changes occurred?"},
            {"from": "gpt", "value": "Yes."},
            {"from": "human", "value": "How many buildings were added?"},
            {"from": "gpt", "value": "3"},
        ],
    },
    {
        "id": 2,
        "image": ["train/A/train_000002.png", "train/B/train_000002.png"],
        "changeflag": 0,
        "conversations": [
            {"from": "human", "value": "<image> <image> Where did the changes occur?"},
            {"from": "gpt", "value": "There is no difference."},
        ],
    },
]


def write_changechat(root: Path) -> Path:
    """``ChangeChat_105k.json`` and LEVIR-CC-style ``images/train/{A,B}/``; returns the JSON's path."""
    for record in CHANGECHAT_RECORDS:
        write_image(root / "images" / record["image"][0], colour=RED)
        write_image(root / "images" / record["image"][1], colour=BLUE)
    return write_json(root / "ChangeChat_105k.json", CHANGECHAT_RECORDS)


# --- GeoPixInstruct-style COCO masks -----------------------------------------------------------

COCO_HEIGHT, COCO_WIDTH = 8, 10


def known_masks() -> dict[str, np.ndarray]:
    """The three masks the COCO fixture encodes, drawn by slicing (rows = y, columns = x)."""
    a = np.zeros((COCO_HEIGHT, COCO_WIDTH), dtype=bool)
    a[2:5, 3:6] = True  # 9 px
    b = np.zeros_like(a)
    b[0:2, 7:10] = True  # 6 px in the top-right corner
    b[7, 0] = True  # and the bottom-left pixel: 7 px
    c = np.zeros_like(a)
    c[1:3, 1:4] = True  # the polygon (1,1)-(4,1)-(4,3)-(1,3) in pixel edges: 6 px
    return {"rle_string": a, "rle_list": b, "polygon": c}


def uncompressed_rle(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE, written by hand: run lengths in column-major order, starting with 0s."""
    flat = mask.flatten(order="F").astype(int)
    counts, value, run = [], 0, 0
    for pixel in flat:
        if pixel == value:
            run += 1
        else:
            counts.append(run)
            value, run = pixel, 1
    counts.append(run)
    return counts


def write_coco_masks(root: Path) -> Path:
    """``annotations.json`` (COCO instances) and ``images/``; returns the JSON's path."""
    from pycocotools import mask as mask_utils

    masks = known_masks()
    compressed = mask_utils.encode(np.asfortranarray(masks["rle_string"].astype(np.uint8)))
    document = {
        "info": {"description": "GeoPixInstruct-style fixture"},
        "images": [
            {"id": 1, "file_name": "P0001_0000.png", "width": COCO_WIDTH, "height": COCO_HEIGHT},
            {"id": 2, "file_name": "P0002_0000.png", "width": COCO_WIDTH, "height": COCO_HEIGHT},
            {"id": 3, "file_name": "P0003_0000.png", "width": COCO_WIDTH, "height": COCO_HEIGHT},
        ],
        "categories": [
            {"id": 1, "name": "plane", "supercategory": "vehicle"},
            {"id": 2, "name": "storage tank", "supercategory": "facility"},
        ],
        "annotations": [
            {
                "id": 11,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": 0,
                "area": 9,
                "bbox": [3, 2, 3, 3],
                "segmentation": {"size": [COCO_HEIGHT, COCO_WIDTH], "counts": compressed["counts"].decode("ascii")},
                "description": "the plane in the middle",
            },
            {
                "id": 12,
                "image_id": 1,
                "category_id": 2,
                "iscrowd": 1,
                "area": 7,
                "bbox": [0, 0, 10, 8],
                "segmentation": {"size": [COCO_HEIGHT, COCO_WIDTH], "counts": uncompressed_rle(masks["rle_list"])},
                "sentences": [{"raw": "storage tanks at the corners", "sent": "storage tanks at the corners"}],
            },
            {
                "id": 13,
                "image_id": 2,
                "category_id": 1,
                "iscrowd": 0,
                "area": 6,
                "bbox": [1, 1, 3, 2],
                "segmentation": [[1, 1, 4, 1, 4, 3, 1, 3]],
            },
        ],
    }
    for image in document["images"]:
        write_image(root / "images" / image["file_name"], size=(COCO_WIDTH, COCO_HEIGHT))
    return write_json(root / "annotations.json", document)


# --- SkyScript CSV -----------------------------------------------------------------------------

SKYSCRIPT_ROWS = [
    ("images2/a198234555_CH_19.jpg", "a satellite image of a golf course", "a golf course next to a road"),
    ("images2/w26773441_NAIP_18.jpg", "an aerial image of a parking lot, with cars", "a parking lot; a building"),
    ("images3/n5210371_SPOT_20.jpg", "a satellite image of a wind turbine\nin a field", "a wind turbine, farmland"),
    ("images7/r11200113_CH_17.jpg", 'a "tennis court"', "a tennis court and a pool"),
]


def write_skyscript(root: Path, name: str = "SkyScript_train_top30pct_filtered_by_CLIP_openai.csv") -> Path:
    """A SkyScript CSV (quoted commas, quotes and a newline inside fields) and its images; returns the CSV."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["filepath", "title", "title_multi_objects"])
    writer.writerows(SKYSCRIPT_ROWS)
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(buffer.getvalue(), encoding="utf-8")
    for filepath, *_ in SKYSCRIPT_ROWS:
        write_image(root / filepath)
    return root / name


# --- WebDataset shards -------------------------------------------------------------------------

SHARD_KEYS = (("rs5m_000000", "rs5m_000001", "rs5m_000002"), ("rs5m_000003", "rs5m_000004"))


def shard_caption(key: str) -> str:
    return f"a remote sensing image number {int(key[-6:])}"


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def jpeg_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_shards(root: Path) -> Path:
    """``shard-000000.tar`` (3 samples) and ``shard-000001.tar`` (2): ``key.jpg``/``key.txt``/``key.json``.

    The first shard also holds a directory entry and a ``__meta__`` member, which readers skip.
    """
    root.mkdir(parents=True, exist_ok=True)
    for n, keys in enumerate(SHARD_KEYS):
        with tarfile.open(root / f"shard-{n:06d}.tar", "w") as tar:
            if n == 0:
                add_member(tar, "__meta__", b"shard metadata")
                directory = tarfile.TarInfo("subdir")
                directory.type = tarfile.DIRTYPE
                tar.addfile(directory)
            for key in keys:
                index = int(key[-6:])
                add_member(tar, f"{key}.jpg", jpeg_bytes((50 * index, 0, 0)))
                add_member(tar, f"{key}.txt", shard_caption(key).encode())
                add_member(tar, f"{key}.json", json.dumps({"key": key, "source": "fixture"}).encode())
    return root


# --- RS5M WebDataset shards --------------------------------------------------------------------

# RS5M's release: pub11-train-0000.tar ..., each sample three members <key>.img_content (encoded
# image), <key>.img_name (original file name), <key>.caption (text), as the authors' dataloader.py reads.
RS5M_SAMPLES = (
    ("pub11-train-0000.tar", "000000001", "laion_8f3a.jpg", "an aerial view of a harbour with boats"),
    ("pub11-train-0000.tar", "000000002", "cc3m_1b2c.jpg", "satellite image of farmland next to a river"),
    ("pub11-train-0001.tar", "000000003", "yfcc_77aa.jpg", "a stadium seen from above"),
)


def write_rs5m_shards(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for shard in sorted({s[0] for s in RS5M_SAMPLES}):
        with tarfile.open(root / shard, "w") as tar:
            for n, (name, key, img_name, caption) in enumerate(RS5M_SAMPLES):
                if name == shard:
                    add_member(tar, f"{key}.img_content", jpeg_bytes((60 * (n + 1), 0, 0)))
                    add_member(tar, f"{key}.img_name", img_name.encode())
                    add_member(tar, f"{key}.caption", caption.encode())
    return root


# --- four scene classes (the clip and capret recipes' overfitting fixture) ---------------------

SCENE_CLASSES = (
    ("forest", (20, 120, 30)),
    ("harbor", (30, 60, 200)),
    ("airport", (200, 200, 200)),
    ("farmland", (180, 150, 60)),
)


def write_scene_classes(root: Path, image_dir: str = "images", splits: tuple[str, ...] = ("train",)) -> Path:
    """``dataset_rsitmd.json`` and ``images/<class>_1.png``: four 32 x 32 images of clearly different
    colours (a little seeded noise), two captions each that name the class, in each of ``splits``."""
    rng = np.random.default_rng(0)
    images = []
    for split in splits:
        for label, colour in SCENE_CLASSES:
            pixels = np.clip(np.array(colour)[None, None] + rng.integers(-20, 20, (32, 32, 3)), 0, 255).astype("uint8")
            filename = f"{label}_{split}.png"
            (root / image_dir).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / image_dir / filename)
            i = len(images)
            images.append(
                {
                    "filename": filename,
                    "imgid": i,
                    "split": split,
                    "sentids": [2 * i, 2 * i + 1],
                    "sentences": [
                        _sentence(f"a satellite image of {label}.", i, 2 * i),
                        _sentence(f"an aerial view of the {label}.", i, 2 * i + 1),
                    ],
                }
            )
    write_json(root / "dataset_rsitmd.json", {"images": images, "dataset": "rsitmd"})
    return root


# --- GeoPixInstruct-style COCO masks over images that show their objects (the segment recipe) -------

# (file name, [(category id, (row0, row1, col0, col1), encoding, description or None)]) on 32 x 32 images:
# planes are red squares, storage tanks blue rectangles, on a grey ground; each mask is its shape.
GEOPIX_SIZE = 32
GEOPIX_CATEGORIES = {1: ("plane", RED), 2: ("storage tank", BLUE)}
GEOPIX_IMAGES = (
    (
        "P0101_0000.png",
        [(1, (4, 12, 4, 12), "rle_string", "the plane at the top left"), (2, (18, 28, 16, 30), "rle_list", None)],
    ),
    ("P0102_0000.png", [(1, (16, 28, 2, 10), "polygon", "the plane at the bottom left")]),
    ("P0103_0000.png", [(2, (2, 10, 20, 30), "rle_string", "the storage tank at the top right")]),
)


def geopix_masks() -> dict[int, np.ndarray]:
    """Annotation id -> its mask (ids 1, 2, ... in GEOPIX_IMAGES order)."""
    out, next_id = {}, 1
    for _name, objects in GEOPIX_IMAGES:
        for _category, (r0, r1, c0, c1), _encoding, _text in objects:
            mask = np.zeros((GEOPIX_SIZE, GEOPIX_SIZE), dtype=bool)
            mask[r0:r1, c0:c1] = True
            out[next_id] = mask
            next_id += 1
    return out


def write_geopix_coco(root: Path) -> Path:
    """``instances.json`` (COCO: compressed and uncompressed RLE, polygons, referring descriptions) and
    ``images/`` whose pixels show the objects; returns the JSON's path."""
    from pycocotools import mask as mask_utils

    masks = geopix_masks()
    images, annotations, next_id = [], [], 1
    for image_id, (name, objects) in enumerate(GEOPIX_IMAGES, 1):
        pixels = np.full((GEOPIX_SIZE, GEOPIX_SIZE, 3), 128, dtype=np.uint8)
        for category, (r0, r1, c0, c1), encoding, text in objects:
            pixels[r0:r1, c0:c1] = GEOPIX_CATEGORIES[category][1]
            mask = masks[next_id]
            if encoding == "rle_string":
                encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                segmentation = {"size": [GEOPIX_SIZE, GEOPIX_SIZE], "counts": encoded["counts"].decode("ascii")}
            elif encoding == "rle_list":
                segmentation = {"size": [GEOPIX_SIZE, GEOPIX_SIZE], "counts": uncompressed_rle(mask)}
            else:
                segmentation = [[c0, r0, c1, r0, c1, r1, c0, r1]]
            annotation = {
                "id": next_id,
                "image_id": image_id,
                "category_id": category,
                "iscrowd": 0,
                "area": int(mask.sum()),
                "bbox": [c0, r0, c1 - c0, r1 - r0],
                "segmentation": segmentation,
            }
            if text:
                annotation["description"] = text
            annotations.append(annotation)
            next_id += 1
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "images" / name)
        images.append({"id": image_id, "file_name": name, "width": GEOPIX_SIZE, "height": GEOPIX_SIZE})
    categories = [{"id": i, "name": n, "supercategory": "object"} for i, (n, _c) in GEOPIX_CATEGORIES.items()]
    return write_json(root / "instances.json", {"images": images, "categories": categories, "annotations": annotations})


# --- LEVIR-CC pairs whose pixels show what changed (the change recipe) ------------------------------

# (file name, changeflag, (row0, row1, col0, col1) of the building drawn on B or None, captions)
LEVIR_CHANGE_PAIRS = (
    (
        "train_000101.png",
        1,
        (2, 14, 2, 14),
        (" a building appears at the top left .", " a house is built at the top left ."),
    ),
    (
        "train_000102.png",
        1,
        (18, 30, 16, 30),
        (" a building appears at the bottom right .", " a house is built at the bottom right ."),
    ),
    ("train_000103.png", 0, None, (" there is no difference .", " the scene is the same as before .")),
    ("train_000104.png", 0, None, (" there is no difference .", " nothing has changed .")),
)
LEVIR_GROUNDS = ((40, 120, 40), (120, 100, 60), (60, 140, 70), (100, 90, 50))


def write_levir_cc_pairs(root: Path, split: str = "train") -> Path:
    """``LevirCCcaptions.json`` (with ``changeflag``) and ``images/<split>/{A,B}/`` of 32 x 32 PNGs: A is a
    field; B is the same field, with a white building where the pair changed."""
    images = []
    rng = np.random.default_rng(1)
    for i, ((filename, flag, box, raws), ground) in enumerate(zip(LEVIR_CHANGE_PAIRS, LEVIR_GROUNDS)):
        before = np.clip(np.array(ground)[None, None] + rng.integers(-10, 10, (32, 32, 3)), 0, 255).astype("uint8")
        after = before.copy()
        if box is not None:
            r0, r1, c0, c1 = box
            after[r0:r1, c0:c1] = 250
        for folder, pixels in (("A", before), ("B", after)):
            (root / "images" / split / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / "images" / split / folder / filename)
        images.append(
            {
                "filepath": split,
                "filename": filename,
                "imgid": i,
                "split": split,
                "changeflag": flag,
                "sentids": [2 * i, 2 * i + 1],
                "sentences": [_sentence(raw, i, 2 * i + j) for j, raw in enumerate(raws)],
            }
        )
    write_json(root / "LevirCCcaptions.json", {"images": images})
    return root


# --- RS-RAG's RSWK release -------------------------------------------------------------------------

# As the authors' build_qdrant_dataset_RSWK.py reads an RSWK record: image_name (image <name>.png),
# "world knowledge" (Name ... Major_Events [{Event, Year, Description}], Notable_Visitors [..]) and
# "remote sensing expert knowledge"; task files are messages JSONL as in DATASET/DATASET_FULL/vqa/.
RSWK_RECORDS = [
    {
        "image_name": "Green Abbey",
        "world knowledge": {
            "Name": "Green Abbey",
            "Category": "Abbey",
            "Location": "Somewhere, Nowhere",
            "Construction_Period": "1114",
            "Historical_Background": "Founded by monks.",
            "Major_Events": [{"Event": "Fire", "Year": "1520", "Description": "The nave burned."}],
            "Architectural_Characteristics": "Romanesque nave.",
            "Primary_Function": "Monastery",
            "Cultural_Significance": "A pilgrimage stop.",
            "Notable_Visitors": ["A king", "A poet"],
        },
        "remote sensing expert knowledge": {"NDVI": 0.13, "LST_Day_1km": 23.16},
    },
    {
        "image_name": "Blue Harbour",
        "world knowledge": {"Name": "Blue Harbour", "Category": "Port", "Historical_Background": "A fishing port."},
        "remote sensing expert knowledge": {},
    },
]
RSWK_QA_LINES = [
    {
        "messages": [
            {"role": "user", "content": "<image>Can you identify the name of the site captured in the remote image?"},
            {"role": "assistant", "content": "Green Abbey"},
        ],
        "images": ["Green Abbey.png"],
        "task": "Visual Question Answering",
    },
    {
        "messages": [
            {"role": "user", "content": "<image>What is the location of the place in the remote image?"},
            {"role": "assistant", "content": "a fishing port"},
        ],
        "images": ["Blue Harbour.png"],
        "task": "Visual Question Answering",
    },
]


def write_rswk(root: Path) -> Path:
    """``ori_data_train.json``, ``images/<image_name>.png`` and ``vqa_wk_full_test_2.jsonl``; returns ``root``."""
    for record in RSWK_RECORDS:
        write_image(root / "images" / f"{record['image_name']}.png", size=(16, 16))
    write_json(root / "ori_data_train.json", RSWK_RECORDS)
    lines = "".join(json.dumps(line) + "\n" for line in RSWK_QA_LINES)
    (root / "vqa_wk_full_test_2.jsonl").write_text(lines, encoding="utf-8")
    return root
