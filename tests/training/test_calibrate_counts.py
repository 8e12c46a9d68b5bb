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
