"""Box conventions to window pixels, on known model answers with results computed by hand."""

from __future__ import annotations

import pytest

from rs_assistant.engine.backends.boxes import (
    ParsedBox,
    clamp_box,
    parse_florence2_boxes,
    parse_florence2_polygons,
    parse_percent_boxes,
    parse_qwen2_boxes,
    parse_qwen25_boxes,
    target_phrase,
)

WINDOW = (200, 100)  # width, height


def approx_boxes(parsed: list[ParsedBox]) -> list[tuple[tuple[float, ...], str]]:
    return [(tuple(round(v, 6) for v in p.box), p.label) for p in parsed]


def rounded(points: tuple[tuple[float, float], ...]) -> list[tuple[float, float]]:
    return [(round(x, 6), round(y, 6)) for x, y in points]


# --- clamping -------------------------------------------------------------------------------------


def test_clamp_box_orders_clamps_and_drops_empty_boxes():
    assert clamp_box((50, 40, 10, 20), WINDOW) == (10, 20, 50, 40)
    assert clamp_box((-5, -5, 250, 150), WINDOW) == (0, 0, 200, 100)
    assert clamp_box((10, 10, 10, 50), WINDOW) is None  # no width
    assert clamp_box((210, 10, 300, 50), WINDOW) is None  # wholly right of the window


# --- Qwen2.5-VL: absolute pixels of the resized image --------------------------------------------

# The model saw the 200 x 100 window resized to 400 x 200: its pixels are half a window pixel.
RESIZED = (400, 200)


def test_qwen25_fenced_json_with_labels():
    text = (
        "```json\n[\n"
        '\t{"bbox_2d": [40, 20, 120, 80], "label": "storage tank"},\n'
        '\t{"bbox_2d": [200, 100, 380, 190], "label": "car"}\n'
        "]\n```"
    )
    assert approx_boxes(parse_qwen25_boxes(text, WINDOW, RESIZED)) == [
        ((20.0, 10.0, 60.0, 40.0), "storage tank"),
        ((100.0, 50.0, 190.0, 95.0), "car"),
    ]


def test_qwen25_scales_each_axis_by_its_own_ratio():
    # window 280 x 140 seen as 56 x 28: x5 on both axes; window 300 x 100 seen as 60 x 40: x5, x2.5
    assert parse_qwen25_boxes('[{"bbox_2d": [10, 4, 20, 8]}]', (280, 140), (56, 28))[0].box == (50, 20, 100, 40)
    assert parse_qwen25_boxes('[{"bbox_2d": [10, 4, 20, 8]}]', (300, 100), (60, 40))[0].box == (50, 10, 100, 20)


def test_qwen25_bare_json_object_and_unlabelled_lists():
    assert approx_boxes(parse_qwen25_boxes('{"bbox_2d": [40, 20, 120, 80], "label": "ship"}', WINDOW, RESIZED)) == [
        ((20.0, 10.0, 60.0, 40.0), "ship")
    ]
    text = "The tanks are at [40, 20, 120, 80] and [0, 0, 10.5, 20]."
    assert approx_boxes(parse_qwen25_boxes(text, WINDOW, RESIZED)) == [
        ((20.0, 10.0, 60.0, 40.0), ""),
        ((0.0, 0.0, 5.25, 10.0), ""),
    ]


def test_qwen25_truncated_answer_keeps_complete_objects():
    text = '```json\n[{"bbox_2d": [40, 20, 120, 80], "label": "a"}, {"bbox_2d": [8, 8, 16, 16], "label": "b"}, {"bbox_2d": [1'
    assert approx_boxes(parse_qwen25_boxes(text, WINDOW, RESIZED)) == [
        ((20.0, 10.0, 60.0, 40.0), "a"),
        ((4.0, 4.0, 8.0, 8.0), "b"),
    ]


def test_qwen25_clamps_orders_and_drops_degenerate_boxes():
    text = (
        '[{"bbox_2d": [-10, 5, 500, 300], "label": "big"},'
        ' {"bbox_2d": [120, 80, 40, 20], "label": "reversed"},'
        ' {"bbox_2d": [10, 10, 10, 50], "label": "flat"},'
        ' {"bbox_2d": [500, 10, 600, 50], "label": "outside"}]'
    )
    assert approx_boxes(parse_qwen25_boxes(text, WINDOW, RESIZED)) == [
        ((0.0, 2.5, 200.0, 100.0), "big"),
        ((20.0, 10.0, 60.0, 40.0), "reversed"),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "I see no storage tanks.",
        "[{",
        '```json\n[{"bbox_2d": "here", "label": "x"}]\n```',
        '[{"bbox_2d": [NaN, 1, 2, 3]}]',
        "[1, 2, 3]",
        '[{"bbox_2d": [true, 1, 2, 3]}]',
        "}{][",
        "[" * 5000 + "]" * 5000,
    ],
)
def test_qwen25_garbage_gives_nothing(text):
    assert parse_qwen25_boxes(text, WINDOW, RESIZED) == []


def test_qwen25_zero_resized_size_gives_nothing():
    assert parse_qwen25_boxes('[{"bbox_2d": [1, 2, 3, 4]}]', WINDOW, (0, 0)) == []


# --- Qwen2-VL: 0-1000 ----------------------------------------------------------------------------


def test_qwen2_boxes_take_the_object_ref_before_them():
    text = (
        "<|object_ref_start|>car<|object_ref_end|><|box_start|>(100,200),(500,600)<|box_end|>"
        "<|box_start|>(0, 0), (1000, 1000)<|box_end|> and "
        "<|object_ref_start|>the river<|object_ref_end|><|box_start|>(900,900),(1200,950)<|box_end|>"
    )
    assert approx_boxes(parse_qwen2_boxes(text, WINDOW)) == [
        ((20.0, 20.0, 100.0, 60.0), "car"),
        ((0.0, 0.0, 200.0, 100.0), "car"),
        ((180.0, 90.0, 200.0, 95.0), "the river"),
    ]


@pytest.mark.parametrize(
    "text", ["", "<|box_start|>(1,2)<|box_end|>", "<|box_start|>(5,5),(5,9)<|box_end|>", "(1,2),(3,4)"]
)
def test_qwen2_garbage_gives_nothing(text):
    assert parse_qwen2_boxes(text, WINDOW) == []


# --- Florence-2: <loc_N>, 1000 bins read at their centre -------------------------------------------


def test_florence2_phrase_grounding_boxes():
    # bin N of a side S -> (N + 0.5) * S / 1000: x bins on 200 px (x 0.2), y bins on 100 px (x 0.1)
    text = "</s><s>storage tank<loc_100><loc_200><loc_500><loc_600><loc_0><loc_0><loc_999><loc_999>road<loc_10><loc_20><loc_30><loc_40></s>"
    assert approx_boxes(parse_florence2_boxes(text, WINDOW)) == [
        ((20.1, 20.05, 100.1, 60.05), "storage tank"),
        ((0.1, 0.05, 199.9, 99.95), "storage tank"),
        ((2.1, 2.05, 6.1, 4.05), "road"),
    ]


def test_florence2_unlabelled_leftover_and_out_of_range_bins():
    # no phrase (region proposals); the 5th-7th bins are not a whole box; bin 1500 reads as bin 999
    text = "<s><loc_100><loc_200><loc_500><loc_600><loc_1><loc_2><loc_3></s>"
    assert approx_boxes(parse_florence2_boxes(text, WINDOW)) == [((20.1, 20.05, 100.1, 60.05), "")]
    assert parse_florence2_boxes("<loc_500><loc_500><loc_1500><loc_1500>", WINDOW)[0].box == pytest.approx(
        (100.1, 50.05, 199.9, 99.95)
    )


@pytest.mark.parametrize(
    "text",
    ["", "</s><s>a caption with no boxes</s>", "<loc_1><loc_2>", "<loc_5><loc_5><loc_5><loc_9>", "<loc_<loc_>>", "<"],
)
def test_florence2_garbage_gives_no_boxes(text):
    assert parse_florence2_boxes(text, WINDOW) == []


def test_florence2_polygons_with_separators():
    text = (
        "</s><s><loc_100><loc_100><loc_500><loc_100><loc_500><loc_500>"
        "<sep><loc_0><loc_0><loc_10><loc_0><loc_10><loc_10><loc_0><loc_10><loc_7></s>"
    )
    polygons = parse_florence2_polygons(text, WINDOW)
    assert len(polygons) == 2
    assert rounded(polygons[0].points) == [(20.1, 10.05), (100.1, 10.05), (100.1, 50.05)]
    assert rounded(polygons[1].points) == [(0.1, 0.05), (2.1, 0.05), (2.1, 1.05), (0.1, 1.05)]  # odd bin dropped
    assert polygons[0].label == polygons[1].label == ""


def test_florence2_polygons_in_poly_tags_with_a_label():
    text = "building<poly><loc_100><loc_100><loc_500><loc_100><loc_500><loc_500></poly><poly><loc_1><loc_1><loc_2><loc_2></poly>"
    polygons = parse_florence2_polygons(text, WINDOW)  # the second ring has two points: not a polygon
    assert len(polygons) == 1
    assert polygons[0].label == "building"
    assert rounded(polygons[0].points) == [(20.1, 10.05), (100.1, 10.05), (100.1, 50.05)]


# --- GeoChat / SkyEyeGPT / GeoPix: 0-100 ---------------------------------------------------------


def test_percent_boxes_rotated_and_plain_forms():
    text = "<p>ship</p> {<10><20><50><60>|45} and {<0><0><100><100>} near [10, 20, 50, 60] {<10><20><50><60>|<-30>}"
    parsed = parse_percent_boxes(text, WINDOW)
    assert [(p.box, p.label, p.angle) for p in parsed] == [
        ((20.0, 20.0, 100.0, 60.0), "ship", 45.0),
        ((0.0, 0.0, 200.0, 100.0), "ship", None),
        ((20.0, 20.0, 100.0, 60.0), "ship", None),
        ((20.0, 20.0, 100.0, 60.0), "ship", -30.0),
    ]


def test_percent_boxes_clamped_and_degenerate_dropped():
    parsed = parse_percent_boxes("[90, 90, 120, 130] [10, 10, 10, 20] {<5>,<5>,<15>,<25>}", WINDOW)
    assert [p.box for p in parsed] == [(180.0, 90.0, 200.0, 100.0), (10.0, 5.0, 30.0, 25.0)]


@pytest.mark.parametrize("text", ["", "{<10><20><50>}", "[1, 2, 3]", "{<a><b><c><d>}", "<p>unclosed"])
def test_percent_garbage_gives_nothing(text):
    assert parse_percent_boxes(text, WINDOW) == []


# --- the phrase a prompt asks for ----------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt, phrase",
    [
        ("Find all the storage tanks.", "storage tanks"),
        ("storage tanks", "storage tanks"),
        ("where are the ships in this image?", "ships"),
        ("Please locate every car", "car"),
        ("segment the buildings in the image", "buildings"),
        ("Can you show me an airplane?", "airplane"),
        ("a red car on the road", "red car on the road"),
        ("", ""),
    ],
)
def test_target_phrase(prompt, phrase):
    assert target_phrase(prompt) == phrase
