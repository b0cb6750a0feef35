import math

import pytest
import torch

from rubiks_eval.metrics import (
    RunningAccuracy,
    aggregate_views,
    compute_metrics,
    confusion_matrix,
    mean_class_accuracy,
    topk_hits,
)


def test_aggregate_views_is_mean_of_raw_logits():
    logits = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 5.0], [2.0, 1.0]])
    out = aggregate_views(logits, num_views=2)
    assert torch.equal(out, torch.tensor([[2.0, 1.0], [1.0, 3.0]]))
    assert torch.equal(aggregate_views(logits.reshape(2, 2, 2)), out)
    # softmax-then-mean would give a different ranking here; raw-logit mean must be used
    big = torch.tensor([[[10.0, 0.0], [0.0, 4.0], [0.0, 4.0]]])
    assert aggregate_views(big).argmax().item() == 0
    with pytest.raises(ValueError, match="multiple"):
        aggregate_views(logits[:3], num_views=2)


def test_topk_hits_and_small_class_count():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05]])
    labels = torch.tensor([2, 0])
    hits = topk_hits(scores, labels, (1, 5))
    assert hits[1].tolist() == [False, True]
    assert hits[5].tolist() == [True, True]  # k clipped to 3 classes


def test_unreadable_videos_count_as_misses():
    scores = torch.eye(4)
    labels = torch.tensor([0, 1, 2, 0])
    m = compute_metrics(
        scores,
        labels,
        torch.tensor([3]),
        [{"index": 4, "video_id": "bad", "label": 3, "reason": "x"}],
    )
    assert m.num_videos == 5 and m.num_evaluated == 4 and m.num_failed == 1
    assert m.top1 == pytest.approx(60.0)
    assert m.top1_readable == pytest.approx(75.0)
    # classes 0: 1/2, 1: 1/1, 2: 1/1, 3: 0/1 -> mean 62.5
    assert m.mean_class_accuracy == pytest.approx(62.5)
    assert m.as_dict()["failures"][0]["video_id"] == "bad"


def test_mean_class_accuracy_ignores_absent_classes_and_unlabelled():
    correct = torch.tensor([True, False, True, True])
    labels = torch.tensor([0, 0, 5, -1])
    assert mean_class_accuracy(correct, labels) == pytest.approx(75.0)
    assert math.isnan(mean_class_accuracy(correct[:0], labels[:0]))


def test_confusion_matrix():
    cm = confusion_matrix(torch.tensor([0, 1, 1, -1]), torch.tensor([0, 0, 1, 1]), 2)
    assert cm.tolist() == [[1, 1], [0, 1]]


def test_running_accuracy():
    r = RunningAccuracy()
    assert r.postfix()["top1"] == "-"
    r.update(torch.eye(3), torch.tensor([0, 1, 0]), failed=1)
    assert r.postfix()["top1"] == "50.00"


def test_non_finite_scores_are_misses_and_counted():
    nan, inf = float("nan"), float("inf")
    scores = torch.tensor([[nan, 0.0, 0.0], [0.0, inf, 0.0], [0.0, 0.0, 1.0]])
    labels = torch.tensor([0, 1, 2])
    m = compute_metrics(scores, labels)  # topk ranks NaN first: it would have "hit" class 0
    assert m.top1 == pytest.approx(100 / 3) and m.top5 == pytest.approx(100 / 3)
    assert m.num_nonfinite == 2 and m.as_dict()["num_nonfinite"] == 2
    assert compute_metrics(torch.full((2, 10), nan), torch.tensor([8, 3])).top5 == 0.0


def test_aggregate_views_refuses_zero_views():
    with pytest.raises(ValueError, match="num_views must be >= 1"):
        aggregate_views(torch.zeros(4, 3), 0)


def test_unlabelled_videos_are_outside_the_accuracies():
    scores = torch.eye(3)
    m = compute_metrics(scores, torch.tensor([0, 2, -1]))  # the third: no label
    assert (m.num_videos, m.num_unlabelled) == (3, 1)
    assert m.top1 == 50.0 and m.mean_class_accuracy == 50.0
    test_split = compute_metrics(scores, torch.tensor([-1, -1, -1]))
    assert test_split.num_unlabelled == 3 and math.isnan(test_split.top1)
    assert math.isnan(test_split.mean_class_accuracy)
    # a failure of unknown label is outside them too; one of known label is a miss
    failures = [{"video_id": "a", "reason": "x"}, {"video_id": "b", "reason": "y"}]
    m = compute_metrics(scores, torch.tensor([0, 1, 2]), torch.tensor([-1, 1]), failures)
    assert (m.num_videos, m.num_unlabelled, m.num_failed) == (5, 1, 2)
    assert m.top1 == 75.0 and m.top1_readable == 100.0
