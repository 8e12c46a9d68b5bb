"""training.eval.calibrate_counts: the count bar is the one whose counts are right most often, or none."""

from training.eval.calibrate_counts import MIN_GAIN, choose


def test_the_bar_that_drops_the_weak_extra_objects_is_chosen():
    # every scene: its true objects scored 0.9, plus as many weak ones (0.45) that are noise
    scores = [[0.9] * n + [0.45] * n for n in (3, 8, 20, 40)]
    bar, accuracy = choose(scores, [3, 8, 20, 40])
    assert accuracy[0.0] == 0.0 and bar == 0.5 and accuracy[0.5] == 1.0  # the lowest bar that drops them


def test_no_bar_when_counting_every_object_is_as_good():
    scores = [[0.9] * n for n in (3, 8, 20)]
    bar, accuracy = choose(scores, [3, 8, 20])
    assert bar is None and accuracy[0.0] == 1.0
    assert MIN_GAIN > 0


def test_instance_matching_is_greedy_by_score_and_counts_each_object_once():
    import numpy as np

    from training.eval.instances import average_precision, mask_overlaps, match

    truths = [(0, 0, 10, 10), (20, 20, 30, 30)]
    found = [(0.9, (0, 0, 10, 10)), (0.8, (0, 0, 10, 9)), (0.7, (20, 20, 30, 30)), (0.6, (50, 50, 60, 60))]
    from training.eval.metrics import box_iou

    hits = match(found, truths, box_iou)
    assert hits == [(0.9, True), (0.8, False), (0.7, True), (0.6, False)]  # the second box on object 1: a duplicate
    assert 0.6 < average_precision(hits, 2) < 1.0 and average_precision(hits[:1], 2) < 0.6
    instance_map = np.zeros((10, 10), np.uint16)
    instance_map[:5, :5], instance_map[5:, 5:] = 1, 2
    half = np.zeros((10, 10), bool)
    half[:5, :] = True
    assert mask_overlaps([half], instance_map, [1, 2]).tolist() == [[0.5, 0.0]]


def test_matching_nothing_or_against_nothing():
    from training.eval.instances import average_precision, match
    from training.eval.metrics import box_iou

    assert match([], [(0, 0, 1, 1)], box_iou) == []
    assert match([(0.5, (0, 0, 1, 1))], [], box_iou) == [(0.5, False)]
    assert average_precision([], 3) == 0.0
