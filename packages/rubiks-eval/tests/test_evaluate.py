import pytest
import torch

from rubiks_eval.evaluate import evaluate
from rubiks_eval.testing import (
    FakeVideoDataset,
    FakeVideoModel,
    failing_rank_worker,
    fake_eval_worker,
    run_local_group,
    sleeping_worker,
)

KW = dict(n=23, num_classes=7, views=3, broken=(4, 17))


def _single(batch_size=4):
    ds = FakeVideoDataset(**KW)
    return evaluate(FakeVideoModel(7), ds, batch_size=batch_size, progress=False)


def test_single_process_counts_every_video():
    r = _single()
    m = r.metrics
    assert m.num_videos == 23 and m.num_evaluated == 21 and m.num_failed == 2
    assert [f["video_id"] for f in m.failures] == ["video0004", "video0017"]
    assert all(f["reason"] == "corrupt stream (fake)" for f in m.failures)
    assert r.video_ids == [f"video{i:04d}" for i in range(23) if i not in (4, 17)]
    assert r.num_views == 3 and r.scores.shape == (21, 7)


def test_scores_are_mean_logits_over_views():
    ds = FakeVideoDataset(**KW)
    model = FakeVideoModel(7).eval()
    r = evaluate(model, ds, batch_size=5, progress=False)
    with torch.no_grad():
        expect = model(ds[0].clip).mean(0)
    torch.testing.assert_close(r.scores[0], expect)
    # batch size does not change results beyond float noise
    torch.testing.assert_close(_single(batch_size=1).scores, r.scores)


def test_exception_in_dataset_is_reported_not_dropped():
    class Flaky(FakeVideoDataset):
        def __getitem__(self, i):
            if i == 2:
                raise OSError("disk on fire")
            return super().__getitem__(i)

    r = evaluate(FakeVideoModel(7), Flaky(n=5, num_classes=7), progress=False)
    assert r.metrics.num_videos == 5 and r.metrics.num_failed == 1
    assert "disk on fire" in r.metrics.failures[0]["reason"]


class _MixedViews(FakeVideoDataset):
    """Video 3 has one view fewer than the others: it follows another protocol."""

    def __getitem__(self, i):
        sample = super().__getitem__(i)
        return sample if i != 3 else type(sample)(sample.clip[1:], sample.label, "odd")


@pytest.mark.parametrize("batch_size", [1, 4])
def test_videos_with_other_view_counts_are_refused(batch_size):
    ds = _MixedViews(n=6, num_classes=7, views=3)
    match = (
        r"video 'odd' has 2 views where earlier videos had 3"
        if batch_size == 1
        else r"within one batch \(video0000: \(3, 4, 3, 8, 8\), odd: \(2, 4, 3, 8, 8\)\)"
    )
    with pytest.raises(ValueError, match=match):
        evaluate(FakeVideoModel(7), ds, batch_size=batch_size, progress=False)


def test_two_processes_equal_one(tmp_path):
    """2 CPU processes (gloo on 127.0.0.1) give exactly the single-process result."""
    one = _single(batch_size=1)
    run_local_group(fake_eval_worker, 2, str(tmp_path), KW, 1)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["world_size"] == 2
        assert got["metrics"] == one.metrics.as_dict()
        assert got["video_ids"] == one.video_ids
        assert torch.equal(got["labels"], one.labels)
        assert torch.equal(got["scores"], one.scores)


def test_a_failing_rank_fails_the_group_promptly():
    """Rank 1 raises while rank 0 waits in a collective: its error path skips the closing
    barrier and exits, so the group ends with an error (rank 1's, or rank 0's broken
    connection, whichever the launcher sees first) instead of a hang."""
    from torch.multiprocessing.spawn import ProcessException

    with pytest.raises(ProcessException) as err:  # a hang would be a TimeoutError
        run_local_group(failing_rank_worker, 2, 1, timeout=120)
    if err.value.error_index == 1:
        assert "rank 1: deliberate failure" in str(err.value)


def test_run_local_group_reports_a_hung_group_as_a_timeout():
    with pytest.raises(TimeoutError, match="still running after 3"):
        run_local_group(sleeping_worker, 2, 60.0, timeout=3)


def test_distenv_single_process_is_a_no_op_context():
    from rubiks_eval.distributed import setup_distributed

    with setup_distributed("cpu") as env:
        assert not env.distributed and not env.owns_group
    env.close()  # idempotent
