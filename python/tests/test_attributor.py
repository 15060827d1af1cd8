"""The Attributor keeps its rewritten graph and session: the second call builds nothing and its
timings show no load, rewrite or session; long runs release the GIL."""

from __future__ import annotations

import threading
import time

import numpy as np

import attrpatch


def test_second_call_does_not_rebuild(model_path):
    a = attrpatch.Attributor(model_path, device="cpu")
    assert a.stats == {"graphs_built": 0, "jobs": 0}
    first = a.run()
    assert a.stats == {"graphs_built": 1, "jobs": 1}
    assert first.timings["rewrite"] > 0 and first.timings["session"] > 0
    second = a.run(attrpatch.default_pairs()[:4])
    assert a.stats == {"graphs_built": 1, "jobs": 2}
    assert second.timings["load"] == second.timings["rewrite"] == second.timings["session"] == 0.0
    # The kept graph runs other pairs correctly: the same four pairs in a fresh Attributor.
    fresh = attrpatch.run(model_path, attrpatch.default_pairs()[:4], device="cpu")
    np.testing.assert_allclose(second.heads, fresh.heads, rtol=1e-6, atol=1e-9)
    # Another kind of job builds its own graph once.
    a.patch()
    a.patch()
    assert a.stats == {"graphs_built": 2, "jobs": 4}


def test_compare_holds_each_method(model_path):
    c = attrpatch.Attributor(model_path, device="cpu").compare(positions=True, ig_steps=2)
    assert c.exact.method == "Activation patching (exact)"
    assert c.attribution.method == "Attribution patching"
    assert c.ig is not None and c.ig.method == "Integrated gradients (2 steps)"
    assert c.exact.heads.shape == c.attribution.heads.shape == (3, 4)
    # Attribution ranks the last layer's heads as exact patching does (docs/src/ground-truth.md: Pearson 1.000).
    assert c.stats["attribution"]["heads"]["pearson"] > 0.99


def test_per_pair_grids_sum_to_the_job_grid(model_path):
    r = attrpatch.run(model_path, per_pair=True, device="cpu")
    assert r.per_pair_heads.shape == (8, 3, 4)
    assert r.per_pair_positions.shape == (8, 3, 14)
    # Each pair's grids are its share of the job's: they sum to them.
    np.testing.assert_allclose(r.per_pair_heads.sum(axis=0), r.heads, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(r.per_pair_positions.sum(axis=0), r.positions, rtol=1e-5, atol=1e-8)
    # and the pairs differ (the last layer's heads are not the same in every pair).
    assert np.ptp(r.per_pair_heads[:, 2, :], axis=0).max() > 1e-4


def test_runs_release_the_gil(model_path):
    """A Python thread keeps counting while a job runs: with the GIL held it could not."""
    a = attrpatch.Attributor(model_path, device="cpu")
    a.run()  # set-up out of the way
    ticks, done = [0], threading.Event()

    def count():
        while not done.is_set():
            ticks[0] += 1
            time.sleep(0.001)

    t = threading.Thread(target=count)
    t.start()
    try:
        start = ticks[0]
        t0 = time.perf_counter()
        a.patch(positions=True)  # several hundred patched rows: long enough to count in
        elapsed = time.perf_counter() - t0
        during = ticks[0] - start
    finally:
        done.set()
        t.join()
    # 1 ms sleeps: at least a quarter of the possible ticks, and more than a handful.
    assert elapsed > 0.05, f"the job took {elapsed:.3f} s, too short to tell"
    assert during >= max(5, int(elapsed * 1000 / 4)), f"{during} ticks in {elapsed:.3f} s"
