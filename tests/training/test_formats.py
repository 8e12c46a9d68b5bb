"""The public data set loaders on tiny fixtures written in each data set's published format.

Every fixture comes from tests/training/fixtures.py; expected values are worked out by hand from the
constants there. Bad input (wrong folder, missing split, missing images, malformed JSON/XML/CSV/tar)
must raise one DataFormatError naming the file, what was found and what was expected.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.training import fixtures
from training.data.formats import (
    RSVQA,
    ChangeChat,
    CocoMasks,
    Conversations,
    DataFormatError,
    DiorRSVG,
    GeoChatInstruct,
    KarpathyCaptions,
    LevirCC,
    Role,
    SecondCC,
    SkyScript,
    WebShards,
    decode_segmentation,
    expand_braces,
    iter_shards,
)


def _rewrite_json(path: Path, edit) -> None:
    document = json.loads(path.read_text(encoding="utf-8"))
    edit(document)
    path.write_text(json.dumps(document), encoding="utf-8")


# --- Karpathy dataset_*.json --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "image_dir", "ext"),
    [
        ("rsicd", "RSICD_images", ".jpg"),
        ("ucm", "imgs", ".tif"),
        ("sydney", "imgs", ".tif"),
        ("rsitmd", "images", ".tif"),
    ],
)
def test_karpathy_splits_captions_and_lazy_images(tmp_path, name, image_dir, ext):
    root = fixtures.write_karpathy(tmp_path, name, image_dir, ext)
    train = KarpathyCaptions(root, "train")
    assert len(train) == 3 and train.name == name
    first = train[0]
    assert first.image_path == root / image_dir / f"scene_1{ext}"
    assert first.image_id == 0 and first.split == "train"
    assert first.captions == ("there are 1 planes .", "Scene 1 has a runway .")  # raw, stripped
    assert first.tokens == (("there", "are", "1", "planes"), ("scene", "1", "has", "a", "runway"))  # as released
    assert first.image().size == (8, 8) and first.image().getpixel((0, 0))[1:] == (0, 0)
    assert [s.image_id for s in KarpathyCaptions(root, "test")] == [4]
    assert [s.image_id for s in KarpathyCaptions(root, ("val", "test"))] == [3, 4]
    assert len(KarpathyCaptions(root, None)) == 5


def test_karpathy_finds_the_released_annotation_names(tmp_path):
    ucm = fixtures.write_karpathy(tmp_path / "UCM_captions", "ucm", "imgs", ".tif")
    assert (ucm / "dataset.json").is_file() and len(KarpathyCaptions(ucm, "train")) == 3
    # RSICD's release keeps its file in annotations_rsicd/ next to RSICD_images/
    rsicd = fixtures.write_karpathy(tmp_path / "RSICD")
    (rsicd / "annotations_rsicd").mkdir()
    (rsicd / "dataset_rsicd.json").rename(rsicd / "annotations_rsicd" / "dataset_rsicd.json")
    data = KarpathyCaptions(rsicd, "test")
    assert data.annotation.parent.name == "annotations_rsicd" and data[0].image_path.parent.name == "RSICD_images"


def test_karpathy_transform_and_dataloader(tmp_path):
    root = fixtures.write_karpathy(tmp_path)
    data = KarpathyCaptions(root, "train", transform=lambda s: torch.tensor(np.asarray(s.image())).float().mean())
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=3)))
    assert batch.tolist() == pytest.approx([0.0, 40 / 3, 80 / 3], abs=1.0)  # red 0, 40, 80 over three channels


def test_karpathy_bad_input(tmp_path):
    # a LEVIR-CC folder given to the Karpathy loader: no dataset_*.json
    levir = fixtures.write_levir_cc(tmp_path / "levir")
    with pytest.raises(DataFormatError, match=r"no dataset_\*\.json \(folder holds LevirCCcaptions\.json, images/\)"):
        KarpathyCaptions(levir)

    root = fixtures.write_karpathy(tmp_path / "rsitmd", "rsitmd", "images", ".tif", splits=("train", "train", "test"))
    with pytest.raises(DataFormatError, match=r"no samples in split 'val'; splits found: test \(1\), train \(2\)"):
        KarpathyCaptions(root, "val")

    (root / "images" / "scene_2.tif").unlink()
    with pytest.raises(
        DataFormatError, match=r"1 image\(s\) it lists are missing under .*images \(e\.g\. scene_2\.tif\)"
    ):
        KarpathyCaptions(root, "train")
    assert len(KarpathyCaptions(root, "test")) == 1  # the other split is still readable

    annotation = root / "dataset_rsitmd.json"
    annotation.write_text(json.dumps({"annotations": []}), encoding="utf-8")
    with pytest.raises(DataFormatError) as error:
        KarpathyCaptions(root)
    assert "dataset_rsitmd.json has no 'images' list" in str(error.value)
    assert 'expected Karpathy format {"images"' in str(error.value)

    annotation.write_text('{"images": [{"filename": "scene_1.tif",', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"dataset_rsitmd\.json: not valid JSON .*line 1.*expected Karpathy"):
        KarpathyCaptions(root)

    annotation.write_text(json.dumps({"images": [{"filename": "scene_1.tif", "imgid": 0, "split": "train"}]}))
    with pytest.raises(DataFormatError, match=r"dataset_rsitmd\.json image 0 has no 'sentences'"):
        KarpathyCaptions(root)


# --- LEVIR-CC and SECOND-CC ---------------------------------------------------------------------


def test_levir_cc_pairs_splits_and_changeflag(tmp_path):
    root = fixtures.write_levir_cc(tmp_path)
    train = LevirCC(root, "train")
    assert [(s.name, s.changed) for s in train] == [("train_000001.png", True), ("train_000002.png", False)]
    first = train[0]
    assert first.before_path == root / "images" / "train" / "A" / "train_000001.png"
    assert first.after_path == root / "images" / "train" / "B" / "train_000001.png"
    assert first.captions == ("a road is built .", "many houses appear .")
    assert first.tokens[0] == ("a", "road", "is", "built")
    assert first.before().getpixel((3, 3)) == fixtures.RED and first.after().getpixel((3, 3)) == fixtures.BLUE
    assert [s.name for s in LevirCC(root, "test")] == ["test_000001.png"]
    assert len(LevirCC(root, None)) == 4
    # change captioning is reported separately for changed and unchanged pairs
    assert sum(s.changed for s in LevirCC(root, None)) == 2
    # pair paths come from 'split', as the authors' create_input_files builds them ('filepath' is not read)
    _rewrite_json(root / "LevirCCcaptions.json", lambda d: d["images"][0].update(filepath="somewhere"))
    assert LevirCC(root, "train")[0].before_path == root / "images" / "train" / "A" / "train_000001.png"


def test_second_cc_pairs_and_semantic_maps(tmp_path):
    root = fixtures.write_second_cc(tmp_path)
    val = SecondCC(root, "val")
    (sample,) = val.samples
    assert sample.before_path == root / "val" / "rgb" / "A" / "00002.png"
    assert sample.after_path == root / "val" / "rgb" / "B" / "00002.png"
    assert sample.before_semantic_path == root / "val" / "sem" / "A" / "00002.png"
    assert sample.after_semantic_path == root / "val" / "sem" / "B" / "00002.png"
    assert sample.captions == ("the two images look alike .", "almost nothing is changed .")
    # no changeflag in SECOND-CC: unchanged when the *second* sentence is a no-change one (MModalCC's rule)
    assert sample.changed is False
    assert [s.changed for s in SecondCC(root, None)] == [True, False, True]
    assert SecondCC(root, "train")[0].tokens[0] == ("the", "low", "vegetation", "turned", "into", "buildings")


def test_change_caption_bad_input(tmp_path):
    karpathy = fixtures.write_karpathy(tmp_path / "rsicd")
    with pytest.raises(
        DataFormatError,
        match=r"LevirCCcaptions\.json: file not found \(folder holds RSICD_images/, "
        r"dataset_rsicd\.json\); expected LEVIR-CC format",
    ):
        LevirCC(karpathy)

    root = fixtures.write_levir_cc(tmp_path / "levir")
    with pytest.raises(
        DataFormatError,
        match=r"no samples in split 'trainval'; splits found: test \(1\), train \(2\), "
        r"val \(1\)",
    ):
        LevirCC(root, "trainval")
    annotation = root / "LevirCCcaptions.json"
    _rewrite_json(annotation, lambda d: d["images"][1].pop("changeflag"))
    with pytest.raises(DataFormatError, match=r"LevirCCcaptions\.json image 1 has no 'changeflag'"):
        LevirCC(root)
    _rewrite_json(annotation, lambda d: d["images"][1].update(changeflag=2))
    with pytest.raises(DataFormatError, match=r"'changeflag' is int 2; expected 0 or 1"):
        LevirCC(root)
    _rewrite_json(annotation, lambda d: d["images"][1].update(changeflag=0))
    (root / "images" / "train" / "B" / "train_000002.png").unlink()
    with pytest.raises(DataFormatError, match=r"1 image\(s\) it lists are missing .*train/B/train_000002\.png"):
        LevirCC(root)

    second = fixtures.write_second_cc(tmp_path / "second")
    shutil.rmtree(second / "test" / "sem")  # semantic maps are not needed to read the pairs
    assert len(SecondCC(second, "test")) == 1
    shutil.rmtree(second / "test" / "rgb")
    with pytest.raises(DataFormatError, match=r"SECOND-CC-AUG\.json: 2 image\(s\) it lists are missing"):
        SecondCC(second, "test")


# --- DIOR-RSVG ----------------------------------------------------------------------------------


def test_dior_rsvg_split_indices_boxes_and_expressions(tmp_path):
    root = fixtures.write_dior_rsvg(tmp_path)
    train = DiorRSVG(root, "train")
    # train.txt lists objects 0, 2, 4: 00001's first, 00002's only, 00003's second
    assert [s.object_index for s in train] == [0, 2, 4]
    assert [s.image_path.name for s in train] == ["00001.jpg", "00002.jpg", "00003.jpg"]
    assert train[0].box == (133.0, 237.0, 684.0, 672.0)
    assert train[0].expression == "A green and brown golf field" and train[0].category == "golffield"
    assert train[1].box == (100.0, 200.0, 300.0, 400.0) and train[1].expression == "an airplane in the middle"
    assert train[2].box == (50.0, 60.0, 150.0, 160.0) and train[2].category == "ship"
    assert train[0].image_size == (800, 800)
    (val,) = DiorRSVG(root, "val").samples
    assert (val.object_index, val.box, val.expression) == (1, (10.0, 20.0, 30.0, 40.0), "the vehicle at the top left")
    (test,) = DiorRSVG(root, "test").samples
    assert (test.image_path.name, test.box) == ("00003.jpg", (5.0, 6.0, 7.0, 8.0))
    assert train[0].image().size == (16, 16)
    # samples come in object order, each index once, whatever the split file's order (the reference's rule)
    (root / "train.txt").write_text("4\n0\n2\n0\n", encoding="utf-8")
    assert [s.object_index for s in DiorRSVG(root, "train")] == [0, 2, 4]
    # the objects are counted over the XML files in sorted path order, not the order they were written in
    assert [s.image_path.name for s in DiorRSVG(root, ("val", "test"))] == ["00001.jpg", "00003.jpg"]


def test_dior_rsvg_bad_input(tmp_path):
    root = fixtures.write_dior_rsvg(tmp_path)
    with pytest.raises(
        DataFormatError,
        match=r"no split file trainval\.txt \(split files found: test\.txt, "
        r"train\.txt, val\.txt\)",
    ):
        DiorRSVG(root, "trainval")
    (root / "val.txt").write_text("1\n7\n", encoding="utf-8")
    with pytest.raises(
        DataFormatError,
        match=r"split val lists object index 7 \(1 out of range\) but Annotations/ "
        r"holds 5 objects; expected indices 0\.\.4",
    ):
        DiorRSVG(root, "val")
    xml = root / "Annotations" / "00002.xml"
    xml.write_text(xml.read_text(encoding="utf-8").replace("</object>", "", 1), encoding="utf-8")
    with pytest.raises(
        DataFormatError,
        match=r"00002\.xml: not well-formed XML \(mismatched tag at line \d+, column "
        r"\d+\); expected VOC XML",
    ):
        DiorRSVG(root, "train")
    xml.write_text(
        fixtures.dior_xml("00002.jpg", [("airplane", (1, 2, 3, 4), "x")]).replace("<description>x</description>", ""),
        encoding="utf-8",
    )
    with pytest.raises(DataFormatError, match=r"00002\.xml: object 0 has no <description> text"):
        DiorRSVG(root, "train")
    shutil.rmtree(root / "Annotations")
    with pytest.raises(DataFormatError, match=r"no Annotations/ folder \(folder holds JPEGImages/, test\.txt"):
        DiorRSVG(root, "train")


# --- RSVQA --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("variant", "image_dir"), [("LR", "Images_LR"), ("HR", "Data")])
def test_rsvqa_active_questions_answers_and_types(tmp_path, variant, image_dir):
    root = fixtures.write_rsvqa(tmp_path, variant)
    data = RSVQA(root, "train")
    assert data.variant == variant
    # image 0 and questions 0-1 are another split's placeholders {"id", "active": false}: skipped
    assert [s.question_id for s in data] == [2, 3, 4, 5]
    assert [s.answer for s in data] == ["yes", "between 11 and 100", "no", "rural"]
    assert [s.question_type for s in data] == ["presence", "count", "comp", "rural_urban"]
    assert data.question_types == ["comp", "count", "presence", "rural_urban"]
    assert data[3].image_path == root / image_dir / "2.tif" and data[3].image_id == 2
    assert data[0].question == "Is there a road?" and data[0].image().size == (16, 16)
    # a question's answer is answers_ids[0], as the authors' VQALoader takes it
    prefix = "LR" if variant == "LR" else "USGS"
    _rewrite_json(root / f"{prefix}_split_train_questions.json", lambda d: d["questions"][3].update(answers_ids=[4, 3]))
    assert RSVQA(root, "train")[1].answer == "no"


def test_rsvqa_bad_input(tmp_path):
    root = fixtures.write_rsvqa(tmp_path, "LR")
    with pytest.raises(
        DataFormatError,
        match=r"no LR_split_val_images\.json \(splits found: train\); expected split "
        r"'val' as LR_split_val_\{images,questions,answers\}\.json",
    ):
        RSVQA(root, "val")
    with pytest.raises(DataFormatError, match=r"no USGS_split_train_images\.json \(splits found: none\)"):
        RSVQA(root, "train", variant="HR")
    _rewrite_json(root / "LR_split_train_questions.json", lambda d: d["questions"][2].update(answers_ids=[99]))
    with pytest.raises(
        DataFormatError,
        match=r"LR_split_train_questions\.json question 2 lists answer 99, which "
        r"LR_split_train_answers\.json does not have",
    ):
        RSVQA(root)
    (root / "LR_split_train_answers.json").write_text('{"answers": [}', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"LR_split_train_answers\.json: not valid JSON"):
        RSVQA(root)
    karpathy = fixtures.write_karpathy(tmp_path / "rsicd")
    with pytest.raises(
        DataFormatError,
        match=r"no RSVQA split files \(folder holds RSICD_images/, "
        r"dataset_rsicd\.json\); expected LR_split_<split>_\*\.json",
    ):
        RSVQA(karpathy)


# --- GeoChat / ChangeChat conversations --------------------------------------------------------


def test_geochat_turns_tasks_and_pixel_boxes(tmp_path):
    annotation = fixtures.write_geochat(tmp_path)
    chat = GeoChatInstruct(annotation, tmp_path / "images")
    assert len(chat) == 3
    refer = chat[0]
    assert refer.id == "P0003_0004" and refer.task == "refer" and refer.image_size == (200, 100)
    assert [t.role for t in refer.turns] == [Role.HUMAN, Role.GPT]
    assert refer.turns[0].text == "[refer] Where is the white plane at the top?"
    (box,) = refer.turns[1].boxes
    # 0-100 grid over 200 x 100 pixels: x * 2, y * 1
    assert box.box == (20.0, 20.0, 100.0, 60.0) and box.angle == 30.0
    grounding = chat[1]
    assert grounding.task == "grounding" and len(grounding.turns) == 4
    assert [b.box for b in grounding.turns[1].boxes] == [(0.0, 0.0, 50.0, 50.0), (150.0, 50.0, 200.0, 100.0)]
    assert [b.label for b in grounding.turns[1].boxes] == ["ships", "ships"]
    assert [b.angle for b in grounding.turns[1].boxes] == [0.0, None]
    assert grounding.turns[3].boxes == () and grounding.turns[3].value == "2"
    assert chat[2].task is None and all(t.boxes == () for t in chat[2].turns)
    assert chat[0].images()[0].size == (200, 100)
    # without a box convention the text is left alone and no image is opened
    plain = Conversations(annotation, tmp_path / "images")
    assert plain[0].turns[1].boxes == () and plain[0].image_size is None


def test_changechat_pairs_and_multi_turn(tmp_path):
    annotation = fixtures.write_changechat(tmp_path)
    chat = ChangeChat(annotation, tmp_path / "images")
    assert [s.id for s in chat] == ["0", "1", "2"]
    assert [s.changed for s in chat] == [True, True, False]  # the records' changeflag
    before, after = chat[1].image_paths
    assert before == tmp_path / "images" / "train" / "A" / "train_000001.png"
    assert after == tmp_path / "images" / "train" / "B" / "train_000001.png"
    assert [(t.role, t.value) for t in chat[1].turns[2:]] == [
        (Role.HUMAN, "How many buildings were added?"),
        (Role.GPT, "3"),
    ]
    images = chat[2].images()
    assert images[0].getpixel((0, 0)) == fixtures.RED and images[1].getpixel((0, 0)) == fixtures.BLUE
    assert chat[0].turns[0].text == "Please briefly describe the changes in these two images."  # both <image> gone

    # the captioning test file has another schema: refused with what it is and what to use instead
    caption_test = tmp_path / "changechat_105k_test.json"
    record = {"image_A": "test/A/test_000001.png", "image_B": "test/B/test_000001.png", "captions": ["a", "b"]}
    caption_test.write_text(json.dumps([{**record, "changeflag": 1}]), encoding="utf-8")
    with pytest.raises(
        DataFormatError, match=r"changechat_105k_test\.json record 0: .*captioning test schema.*LevirCC"
    ):
        ChangeChat(caption_test, tmp_path / "images")


def test_conversation_bad_input(tmp_path):
    annotation = fixtures.write_changechat(tmp_path)
    records = json.loads(annotation.read_text(encoding="utf-8"))

    annotation.write_text(json.dumps({"data": records}), encoding="utf-8")
    with pytest.raises(
        DataFormatError,
        match=r"ChangeChat_105k\.json is an object with keys 'data', not a list of "
        r"records .*expected LLaVA conversation JSON",
    ):
        ChangeChat(annotation, tmp_path / "images")

    bad = json.loads(json.dumps(records))
    bad[1]["conversations"][1]["from"] = "assistant"
    annotation.write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"record 1 turn 1: 'from' is 'assistant'; expected 'human' or 'gpt'"):
        ChangeChat(annotation, tmp_path / "images")

    bad = json.loads(json.dumps(records))
    bad[2]["image"] = bad[2]["image"][0]
    annotation.write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"record 2: 1 image\(s\); expected 2 \(a before/after pair\)"):
        ChangeChat(annotation, tmp_path / "images")

    annotation.write_text(json.dumps(records), encoding="utf-8")
    (tmp_path / "images" / "train" / "B" / "train_000002.png").unlink()
    with pytest.raises(DataFormatError, match=r"ChangeChat_105k\.json: 1 image\(s\) it lists are missing"):
        ChangeChat(annotation, tmp_path / "images")


# --- GeoPixInstruct-style COCO masks ------------------------------------------------------------


def test_coco_masks_rle_string_list_and_polygon_round_trip(tmp_path):
    annotation = fixtures.write_coco_masks(tmp_path)
    masks = fixtures.known_masks()
    data = CocoMasks(annotation, tmp_path / "images")
    assert len(data) == 3
    first = data[0]
    assert first.image_path == tmp_path / "images" / "P0001_0000.png" and first.size == (10, 8)
    by_id = {m.annotation_id: m for m in first.instances}
    assert np.array_equal(by_id[11].mask, masks["rle_string"]) and by_id[11].mask.sum() == 9
    assert np.array_equal(by_id[12].mask, masks["rle_list"]) and by_id[12].mask.sum() == 7
    assert by_id[11].category == "plane" and by_id[12].category == "storage tank" and by_id[12].iscrowd
    assert by_id[11].box == (3.0, 2.0, 6.0, 5.0)  # COCO [x, y, w, h] -> (x0, y0, x1, y1)
    assert by_id[11].texts == ("the plane in the middle",)
    assert by_id[12].texts == ("storage tanks at the corners",)
    (polygon,) = data[1].instances
    assert np.array_equal(polygon.mask, masks["polygon"]) and polygon.box == (1.0, 1.0, 4.0, 3.0)
    assert data[2].instances == ()  # an image without annotations is kept
    # the hand-written uncompressed RLE: 7 zeros, the bottom-left pixel, then zeros to column 7
    assert fixtures.uncompressed_rle(masks["rle_list"])[:3] == [7, 1, 48]


def test_coco_masks_bad_input(tmp_path):
    annotation = fixtures.write_coco_masks(tmp_path)
    with pytest.raises(DataFormatError, match=r"RLE size \[4, 4\] does not match its image \(8 x 10\)"):
        decode_segmentation({"size": [4, 4], "counts": [16]}, 8, 10, "x")
    with pytest.raises(DataFormatError, match=r"uncompressed RLE counts sum to 79; expected 80"):
        decode_segmentation({"size": [8, 10], "counts": [79]}, 8, 10, "x")
    with pytest.raises(DataFormatError, match=r"segmentation is a list of 1 item\(s\); expected RLE"):
        decode_segmentation([[1, 2]], 8, 10, "x")

    _rewrite_json(annotation, lambda d: d["annotations"][0]["segmentation"].update(size=[10, 8]))
    data = CocoMasks(annotation, tmp_path / "images")  # masks are decoded on access, not up front
    with pytest.raises(DataFormatError, match=r"annotations\.json annotation 11: RLE size \[10, 8\] does not match"):
        data[0]
    _rewrite_json(annotation, lambda d: d["annotations"][2].update(image_id=9))
    with pytest.raises(DataFormatError, match=r"annotations\.json annotation 2: image_id 9 is not in 'images'"):
        CocoMasks(annotation, tmp_path / "images")
    _rewrite_json(annotation, lambda d: d.pop("annotations"))
    with pytest.raises(DataFormatError, match=r"annotations\.json has no 'images' and 'annotations' lists"):
        CocoMasks(annotation, tmp_path / "images")


# --- SkyScript CSV ------------------------------------------------------------------------------


def test_skyscript_rows_columns_and_quoting(tmp_path):
    csv_path = fixtures.write_skyscript(tmp_path)
    data = SkyScript(csv_path, tmp_path)
    assert len(data) == 4 and data.columns == ["filepath", "title", "title_multi_objects"]
    assert data[0].image_path == tmp_path / "images2" / "a198234555_CH_19.jpg"
    assert data[0].caption == "a satellite image of a golf course"
    assert data[1].caption == "an aerial image of a parking lot, with cars"  # quoted comma
    assert data[2].caption == "a satellite image of a wind turbine\nin a field"  # quoted newline
    assert data[3].caption == 'a "tennis court"' and data[-1].caption == data[3].caption
    assert SkyScript(csv_path, tmp_path, caption_column="title_multi_objects")[1].caption == "a parking lot; a building"
    assert data[2].image().size == (8, 8)
    assert data._offsets.dtype == np.int64 and data._offsets.shape == (4,)  # only offsets are kept
    with pytest.raises(IndexError):
        data[4]


def test_skyscript_bad_input(tmp_path):
    csv_path = fixtures.write_skyscript(tmp_path)
    with pytest.raises(
        DataFormatError,
        match=r"header has columns \['filepath', 'title', 'title_multi_objects'\], "
        r"no 'caption'; expected a SkyScript CSV with columns filepath",
    ):
        SkyScript(csv_path, tmp_path, caption_column="caption")
    csv_path.write_text(
        csv_path.read_text(encoding="utf-8") + "images2/x.jpg,only two,fields,too many\n", encoding="utf-8"
    )
    data = SkyScript(csv_path, tmp_path)
    with pytest.raises(
        DataFormatError,
        match=r"line 7 has 4 fields; expected 3 \(filepath, title, "
        r"title_multi_objects\)",
    ):
        data[4]
    (tmp_path / "images2" / "a198234555_CH_19.jpg").unlink()
    with pytest.raises(DataFormatError, match=r"a198234555_CH_19\.jpg: image not found"):
        data[0].image()
    with pytest.raises(DataFormatError, match=r"missing\.csv: file not found"):
        SkyScript(tmp_path / "missing.csv", tmp_path)


# --- WebDataset shards --------------------------------------------------------------------------


def test_expand_braces():
    assert expand_braces("shard-{000000..000002}.tar") == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert expand_braces("{a,b}-{8..10}.tar") == ["a-8.tar", "a-9.tar", "a-10.tar", "b-8.tar", "b-9.tar", "b-10.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_shards_group_members_by_key_across_shards(tmp_path):
    root = fixtures.write_shards(tmp_path)
    samples = list(iter_shards(str(root / "shard-{000000..000001}.tar")))
    assert [s.key for s in samples] == [k for keys in fixtures.SHARD_KEYS for k in keys]
    assert [Path(s.shard).name for s in samples] == ["shard-000000.tar"] * 3 + ["shard-000001.tar"] * 2
    first = samples[0]
    assert set(first.fields) == {"jpg", "txt", "json"}  # __meta__ and the directory entry are skipped
    assert first.text() == "a remote sensing image number 0"
    assert first.json() == {"key": "rs5m_000000", "source": "fixture"}
    assert samples[4].image().size == (8, 8) and samples[4].image().getpixel((4, 4))[0] > 150  # red 200
    only_text = list(iter_shards([root / "shard-000001.tar"], suffixes=["txt"]))
    assert [set(s.fields) for s in only_text] == [{"txt"}, {"txt"}]


def test_shards_shuffle_buffer_is_a_seeded_permutation(tmp_path):
    root = fixtures.write_shards(tmp_path)
    pattern = str(root / "shard-{000000..000001}.tar")
    keys = [k for keys in fixtures.SHARD_KEYS for k in keys]
    a = [s.key for s in iter_shards(pattern, shuffle_buffer=3, seed=1)]
    b = [s.key for s in iter_shards(pattern, shuffle_buffer=3, seed=1)]
    assert a == b and sorted(a) == keys
    orders = {tuple(s.key for s in iter_shards(pattern, shuffle_buffer=3, seed=seed)) for seed in range(6)}
    assert len(orders) > 1


def test_webshards_split_shards_over_dataloader_workers(tmp_path):
    root = fixtures.write_shards(tmp_path)
    data = WebShards(str(root / "shard-{000000..000001}.tar"), transform=lambda s: s.text())
    assert sorted(data) == sorted(fixtures.shard_caption(k) for keys in fixtures.SHARD_KEYS for k in keys)
    ranks = [
        list(WebShards(str(root / "shard-{000000..000001}.tar"), rank=r, world_size=2, transform=lambda s: s.key))
        for r in (0, 1)
    ]
    assert ranks == [list(fixtures.SHARD_KEYS[0]), list(fixtures.SHARD_KEYS[1])]
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2)
    assert sorted(loader) == sorted(data)  # each worker reads its own shard: nothing twice, nothing lost


def test_shards_stream_member_by_member(tmp_path):
    """Samples before a corrupt part of a shard come out before the error: the shard is never read whole."""
    root = fixtures.write_shards(tmp_path)
    shard = root / "shard-000000.tar"
    with tarfile.open(shard) as tar:
        offset = tar.getmember("rs5m_000002.jpg").offset  # the third sample's first header
    data = bytearray(shard.read_bytes())
    data[offset : offset + 512] = b"\xff" * 512
    shard.write_bytes(bytes(data))
    seen = []
    with pytest.raises(
        DataFormatError,
        match=rf"shard-000000\.tar: not a readable tar archive \(invalid member header "
        rf"at byte {offset}\)",
    ):
        for sample in iter_shards([shard]):
            seen.append(sample.key)
    # rs5m_000001 was still open (a key ends only when the next one starts), so it is not given out
    assert seen == ["rs5m_000000"]


def test_rs5m_shards_img_content_and_caption_members(tmp_path):
    root = fixtures.write_rs5m_shards(tmp_path)
    samples = list(iter_shards(str(root / "pub11-train-{0000..0001}.tar")))
    assert [s.key for s in samples] == [key for _shard, key, _name, _caption in fixtures.RS5M_SAMPLES]
    assert set(samples[0].fields) == {"img_content", "img_name", "caption"}
    assert [s.text() for s in samples] == [caption for *_, caption in fixtures.RS5M_SAMPLES]
    assert samples[2].image().size == (8, 8) and samples[2].image().getpixel((4, 4))[0] > 150  # red 180
    assert samples[0]["img_name"] == b"laion_8f3a.jpg"


def test_shards_bad_input(tmp_path):
    root = fixtures.write_shards(tmp_path)
    with pytest.raises(DataFormatError, match=r"shard-000009\.tar: shard not found; expected a WebDataset tar file"):
        list(iter_shards(str(root / "shard-000009.tar")))
    not_tar = root / "captions.tar"
    not_tar.write_text("filepath,title\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"captions\.tar: not a readable tar archive .*expected a WebDataset"):
        list(iter_shards([not_tar]))
    with tarfile.open(root / "dup.tar", "w") as tar:
        fixtures.add_member(tar, "k1.txt", b"one")
        fixtures.add_member(tar, "k1.txt", b"two")
    with pytest.raises(DataFormatError, match=r"dup\.tar: sample 'k1' has two 'txt' members"):
        list(iter_shards([root / "dup.tar"]))
    with tarfile.open(root / "textonly.tar", "w") as tar:
        fixtures.add_member(tar, "k2.txt", b"caption")
    (sample,) = iter_shards([root / "textonly.tar"])
    with pytest.raises(DataFormatError, match=r"sample 'k2' has no image \(members: txt\); expected one of jpg"):
        sample.image()


# --- RS-RAG's RSWK release ------------------------------------------------------------------------


def test_rswk_release_converts_to_the_rag_folder(tmp_path):
    from training.data.formats.knowledge import convert_rswk, read_passages, read_qa

    src = fixtures.write_rswk(tmp_path / "rswk")
    out = convert_rswk(
        src / "ori_data_train.json", src / "images", tmp_path / "rag", {"test": src / "vqa_wk_full_test_2.jsonl"}
    )
    passages = read_passages(out)
    # four passages for the full record (as the authors index a landmark), one for the sparse one
    assert [p.id for p in passages] == [
        "Green Abbey#basic_info_and_history",
        "Green Abbey#architecture_and_function",
        "Green Abbey#culture_and_visitor",
        "Green Abbey#expert_knowledge",
        "Blue Harbour#basic_info_and_history",
    ]
    basic = passages[0]
    assert basic.title == "Green Abbey" and "Major_Events: Fire 1520: The nave burned." in basic.text
    assert "Notable_Visitors: A king; A poet" in passages[2].text and "NDVI: 0.13" in passages[3].text
    assert Path(basic.image).name == "Green Abbey.png"
    qa = read_qa(out, "test", {p.id for p in passages})
    assert [(q.question, q.answer) for q in qa] == [
        ("Can you identify the name of the site captured in the remote image?", "Green Abbey"),
        ("What is the location of the place in the remote image?", "a fishing port"),
    ]
    assert qa[1].knowledge_ids == ("Blue Harbour#basic_info_and_history",)

    records = json.loads((src / "ori_data_train.json").read_text(encoding="utf-8"))
    records[1].pop("image_name")
    (src / "ori_data_train.json").write_text(json.dumps(records), encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"ori_data_train\.json record 1: .* no 'image_name' string"):
        convert_rswk(src / "ori_data_train.json", src / "images", tmp_path / "rag2", {})


# --- every loader, pointed at another data set's files ------------------------------------------------


def _all_fixtures(root: Path) -> dict[str, Path]:
    """Each fixture's folder (or file, for the loaders that read one file)."""
    return {
        "karpathy": fixtures.write_karpathy(root / "rsicd"),
        "levir": fixtures.write_levir_cc(root / "levir"),
        "second": fixtures.write_second_cc(root / "second"),
        "dior": fixtures.write_dior_rsvg(root / "dior"),
        "rsvqa": fixtures.write_rsvqa(root / "rsvqa"),
        "geochat": fixtures.write_geochat(root / "geochat"),
        "coco": fixtures.write_coco_masks(root / "coco"),
        "skyscript": fixtures.write_skyscript(root / "skyscript"),
        "rswk": fixtures.write_rswk(root / "rswk") / "ori_data_train.json",
    }


def test_every_loader_refuses_every_other_layout_with_a_format_error(tmp_path):
    """A folder or file in another data set's layout gives one DataFormatError naming a file or folder of it,
    never a KeyError or TypeError from deep inside."""
    from training.data.formats.knowledge import read_passages

    found = _all_fixtures(tmp_path)
    folder = {k: (v if v.is_dir() else v.parent) for k, v in found.items()}
    files = {k: v for k, v in found.items() if v.is_file()}
    files.update(
        karpathy=folder["karpathy"] / "dataset_rsicd.json",
        levir=folder["levir"] / "LevirCCcaptions.json",
        rsvqa=folder["rsvqa"] / "LR_split_train_questions.json",
    )
    folder_loaders = {
        "karpathy": KarpathyCaptions,
        "levir": lambda p: LevirCC(p, None),
        "second": lambda p: SecondCC(p, None),
        "dior": DiorRSVG,
        "rsvqa": RSVQA,
        "rag": read_passages,
    }
    file_loaders = {
        "geochat": lambda p: GeoChatInstruct(p, p.parent / "images"),
        "coco": lambda p: CocoMasks(p, p.parent / "images"),
        "skyscript": lambda p: SkyScript(p, p.parent),
    }
    cases = [(name, loader, path) for name, loader in folder_loaders.items() for k, path in folder.items() if k != name]
    cases += [(name, loader, path) for name, loader in file_loaders.items() for k, path in files.items() if k != name]
    for name, loader, path in cases:
        with pytest.raises(DataFormatError) as error:
            loader(path)
        message = str(error.value)
        assert path.name in message or str(path) in message, (name, path, message)
        assert "expected" in message, (name, path, message)
