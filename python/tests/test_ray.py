"""attrpatch.ray on a real local Ray cluster (one per module, 2 CPUs): the grids and the edge scores
equal one process's for any actors and uneven blocks, an actor SIGKILLed mid-run is restarted and
every pair is counted once, a data error names its line as the CLI does, and an out folder resumes
by block and refuses another job's results.

Needs ray[data] (`pip install 'attrpatch[ray]'`): under CI a missing Ray fails these tests, elsewhere
they are skipped with the reason."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import attrpatch
from conftest import ROOT, missing
from ioi_pairs import ioi_pairs

# Grids: every cell within 1e-6 of the one-process cell, relative to it or to the grid's largest
# cell (a cell near 0 is a difference of large terms, so its own scale is not the float noise's).
RTOL = 1e-6

def write_jsonl(path: Path, pairs: list, blank_after: int = -1) -> Path:
    lines = []
    for i, p in enumerate(pairs):
        lines.append(json.dumps(p))
        if i == blank_after:
            lines.append("")  # a blank line: pair ids are lines, not counts
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def ray_mod():
    """One local cluster for the module: 2 CPUs, as the issue's 2-worker set-up."""
    try:
        import ray
        import attrpatch.ray  # noqa: F401
    except ImportError as e:
        missing(f"ray is not installed ({e}); pip install 'attrpatch[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    """37 pairs (prime: no block size divides it) with a blank line after the 10th."""
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", ioi_pairs(37), blank_after=9)


@pytest.fixture(scope="module")
def one_process(model_path, pairs_file):
    return attrpatch.run(model_path, pairs_file, device="cpu", per_pair=True)


def assert_grids_equal(got, want):
    for name in ("heads", "positions"):
        g, w = getattr(got, name), getattr(want, name)
        assert g.shape == w.shape, f"{name}: shape {g.shape} vs {w.shape}"
        if w.size == 0:
            continue
        err = np.abs(g - w)
        bound = RTOL * np.maximum(np.abs(w), np.abs(w).max())
        worst = np.unravel_index(np.argmax(err / bound), err.shape)
        assert (err <= bound).all(), f"{name}{list(worst)}: {g[worst]} vs {w[worst]} (one process)"
    assert got.clean_metric == pytest.approx(want.clean_metric, rel=1e-9)
    assert got.corrupted_metric == pytest.approx(want.corrupted_metric, rel=1e-9)
    np.testing.assert_allclose(got.pair_metrics, want.pair_metrics, rtol=1e-6, atol=1e-7)
    assert got.warnings == want.warnings
    assert got.position_labels == want.position_labels
    assert got.method == want.method


@pytest.mark.parametrize("actors, block_size", [(1, 37), (1, 7), (2, 5), (2, 16)])
def test_grids_equal_one_process_for_uneven_blocks(ray_mod, model_path, pairs_file, one_process, actors, block_size):
    import attrpatch.ray as apr

    r, rows = apr.attribute(pairs_file, model_path, actors=actors, block_size=block_size, device="cpu",
                            per_pair=True, return_rows=True)
    assert_grids_equal(r, one_process)
    # Each pair's share too: the per-pair grids are normalised over the whole set, not per block.
    np.testing.assert_allclose(r.per_pair_heads, one_process.per_pair_heads, rtol=1e-5,
                               atol=RTOL * np.abs(one_process.heads).max())
    # Pair ids are the lines (the blank line after the 10th pair shifts the rest by one).
    ids = sorted(row["pair_id"] for row in rows.take_all())
    assert ids == list(range(1, 11)) + list(range(12, 39))
    assert r.raw["pair_ids"] == ids
    # One graph and session per actor: no block rebuilt it, and no more workers than actors ran.
    metas = [json.loads(m["block_meta"]) for m in rows.select_columns(["block_meta"]).take_all() if m["block_meta"]]
    assert len(metas) >= -(-37 // block_size)
    assert {m["graphs_built"] for m in metas} == {1}
    assert 1 <= len({m["worker_pid"] for m in metas}) <= actors


def test_rows_sum_to_the_grids(ray_mod, model_path, pairs_file, one_process):
    """The per-pair rows are unnormalised: their sum over N * (CLEAN - CORR) is the grid."""
    import attrpatch.ray as apr

    rows = apr.pair_rows(pairs_file, model_path, actors=2, block_size=9, device="cpu").take_all()
    clean = np.array([r["clean_metric"] for r in rows])
    corr = np.array([r["corrupted_metric"] for r in rows])
    heads = sum(np.asarray(r["heads_raw"]) for r in rows) / (len(rows) * (clean.mean() - corr.mean()))
    np.testing.assert_allclose(heads, one_process.heads, rtol=1e-5, atol=RTOL * np.abs(one_process.heads).max())


def test_patch_and_integrated_gradients_equal_one_process(ray_mod, model_path, tmp_path):
    import attrpatch.ray as apr

    f = write_jsonl(tmp_path / "p.jsonl", ioi_pairs(11, seed=3))
    want = attrpatch.patch(model_path, f, positions=True, device="cpu")
    got = apr.patch(f, model_path, positions=True, actors=2, block_size=4, device="cpu")
    assert got.method == "Activation patching (exact)"
    assert_grids_equal(got, want)
    # Without positions: heads only, the position labels still the whole set's.
    want = attrpatch.patch(model_path, f, device="cpu")
    got = apr.patch(f, model_path, actors=1, block_size=5, device="cpu")
    assert got.positions.size == 0 and len(got.position_labels) > 0
    assert_grids_equal(got, want)
    want = attrpatch.run(model_path, f, ig_steps=3, device="cpu")
    got = apr.attribute(f, model_path, ig_steps=3, actors=2, block_size=3, device="cpu")
    assert got.method == "Integrated gradients (3 steps)"
    assert_grids_equal(got, want)


def test_dataset_input(ray_mod, model_path, pairs_file, one_process):
    import attrpatch.ray as apr

    items = [dict(p, pair_id=100 + i) for i, p in enumerate(json.loads(f"[{','.join(l for l in pairs_file.read_text().splitlines() if l)}]"))]
    ds = ray_mod.data.from_items(items)
    r = apr.attribute(ds, model_path, actors=1, block_size=10, device="cpu")
    assert_grids_equal(r, one_process)
    assert r.raw["pair_ids"] == list(range(100, 137))
    with pytest.raises(attrpatch.InputError, match="no 'pair_id' column"):
        apr.attribute(ray_mod.data.from_items([{k: v for k, v in p.items() if k != "pair_id"} for p in items]),
                      model_path, actors=1)


def _data_error_names_the_line(ray_mod, model_path, tmp_path, cli, job, one_process, on_ray):
    """A two-token answer on line 7: one process, the Rust binary, the Ray command line (run first:
    the failed job below keeps its actors, and the module's 2 CPUs, until its traceback is freed)
    and the Python API on Ray all give the same message naming the line, with no traceback."""
    pairs = ioi_pairs(12, seed=5)
    pairs[6] = dict(pairs[6], correct=" Mary Poppins")  # line 7 of the file: two tokens
    f = write_jsonl(tmp_path / "bad.jsonl", pairs)
    with pytest.raises(attrpatch.InputError) as one:
        one_process(model_path, f, device="cpu")
    want = str(one.value)
    assert f"{f}:7: pair 6: correct answer \" Mary Poppins\"" in want
    rust = subprocess.run([str(cli), job, "--model", str(model_path), "--prompts", str(f), "--device", "cpu",
                           "--out", str(tmp_path / "rust")], capture_output=True, text=True, cwd=ROOT)
    assert rust.returncode != 0 and want in rust.stderr
    address = ray_mod.get_runtime_context().gcs_address
    p = subprocess.run([sys.executable, "-m", "attrpatch.ray", job, "--model", str(model_path), "--prompts",
                        str(f), "--out", str(tmp_path / "out"), "--address", address, "--actors", "1"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"error: {want}" in p.stderr
    assert "Traceback" not in p.stderr and "RayTaskError" not in p.stderr
    with pytest.raises(attrpatch.InputError) as got:
        on_ray(f, model_path, actors=2, block_size=5, device="cpu")
    assert str(got.value) == want
    del got
    return f


def test_data_error_names_the_line_as_the_cli(ray_mod, model_path, tmp_path, cli):
    import attrpatch.ray as apr

    _data_error_names_the_line(ray_mod, model_path, tmp_path, cli, "run", attrpatch.run, apr.attribute)


def test_cli_writes_the_results_and_resumes(ray_mod, model_path, pairs_file, one_process, tmp_path):
    """`python -m attrpatch.ray run` on this cluster: results.json and heads.csv hold the
    one-process grids; a second run computes no block again."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "attrpatch.ray", "run", "--model", str(model_path), "--prompts", str(pairs_file),
           "--out", str(out), "--address", ray_mod.get_runtime_context().gcs_address, "--actors", "1",
           "--block-size", "10"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "37 pairs" in p.stdout
    results = json.loads((out / "results.json").read_text())
    got = np.array(results["heads"])
    assert got.shape == one_process.heads.shape
    assert np.abs(got - one_process.heads).max() <= RTOL * np.abs(one_process.heads).max()
    assert results["pair_ids"][:11] == list(range(1, 11)) + [12]
    header = (out / "heads.csv").read_text().splitlines()[0]
    assert header == "Layer,0,1,2,3"
    files = block_files(out)
    assert len(files) == 4
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert block_files(out) == files


def block_files(out: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in sorted((out / "blocks").glob("block-*.parquet"))}


def test_out_folder_resumes_by_block_and_refuses_other_settings(ray_mod, model_path, pairs_file, one_process, tmp_path):
    import attrpatch.ray as apr

    out = tmp_path / "out"
    first = apr.attribute(pairs_file, model_path, out=out, actors=2, block_size=8, device="cpu")
    assert_grids_equal(first, one_process)
    files = block_files(out)
    assert len(files) == 5  # 37 pairs in blocks of 8
    # A crash lost one block: the rerun computes only that one (same name), the others are reused.
    lost = sorted(files)[2]
    (out / "blocks" / lost).unlink()
    time.sleep(0.01)
    again = apr.attribute(pairs_file, model_path, out=out, actors=1, block_size=8, device="cpu")
    assert_grids_equal(again, one_process)
    after = block_files(out)
    assert set(after) == set(files)
    assert {k: v for k, v in after.items() if k != lost} == {k: v for k, v in files.items() if k != lost}
    # Another block size over what is left: pairs are skipped by id, never counted twice.
    (out / "blocks" / lost).unlink()
    mixed = apr.attribute(pairs_file, model_path, out=out, actors=2, block_size=3, device="cpu")
    assert_grids_equal(mixed, one_process)
    assert len(apr.read_rows(out)) == 37
    # Other settings in the same folder are refused, naming what differs.
    with pytest.raises(attrpatch.InputError, match="its metric is 'logit-diff', this job's 'logprob-diff'"):
        apr.attribute(pairs_file, model_path, out=out, metric="logprob-diff", actors=1, device="cpu")
    edited = write_jsonl(tmp_path / "edited.jsonl", ioi_pairs(37, seed=1))
    with pytest.raises(attrpatch.InputError, match="its pairs_sha256 is"):
        apr.attribute(edited, model_path, out=out, actors=1, device="cpu")
    # A block of another job copied in is refused too.
    other = tmp_path / "other"
    apr.attribute(edited, model_path, out=other, actors=1, block_size=37, device="cpu")
    stranger = next(iter(block_files(other)))
    (out / "blocks" / stranger).write_bytes((other / "blocks" / stranger).read_bytes())
    with pytest.raises(attrpatch.InputError, match="written by a different job"):
        apr.attribute(pairs_file, model_path, out=out, actors=1, device="cpu")


def map_workers() -> list:
    """Pids of this machine's Ray Data actor processes (their title is ray::MapWorker(...))."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"ray::MapWorker"):
                pids.append(int(d.name))
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the actor processes in /proc (Linux)")
@pytest.mark.parametrize("job", ["patch", "edges"])
def test_actor_killed_mid_run_is_restarted_and_every_pair_counted_once(ray_mod, model_path, tmp_path, job):
    import attrpatch.ray as apr

    pairs = ioi_pairs(120, seed=7)
    f = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    # EAP-IG with 4 steps: blocks slow enough on this model that the kill lands mid-run.
    if job == "patch":
        want = attrpatch.patch(model_path, f, positions=True, device="cpu")
    else:
        want = attrpatch.edges(model_path, f, ig_steps=4, device="cpu")
    out = tmp_path / "out"
    total = -(-len(pairs) // 4)
    result, error = {}, []

    def run():
        try:
            if job == "patch":
                result["r"] = apr.patch(f, model_path, positions=True, out=out, actors=2, block_size=4,
                                        device="cpu", max_restarts=2)
            else:
                result["r"] = apr.edges(f, model_path, ig_steps=4, out=out, actors=2, block_size=4,
                                        device="cpu", max_restarts=2)
        except BaseException as e:  # noqa: BLE001  (reported below)
            error.append(e)

    t = threading.Thread(target=run)
    t.start()
    killed, at = None, None
    deadline = time.monotonic() + 240
    while t.is_alive() and time.monotonic() < deadline and killed is None:
        done = len(list((out / "blocks").glob("block-*.parquet"))) if (out / "blocks").is_dir() else 0
        workers = map_workers()
        if done >= 1 and len(workers) == 2:
            killed, at = workers[0], done
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.002)
    t.join(timeout=300)
    assert not t.is_alive(), "the run did not finish after the kill"
    assert not error, f"the run failed after the kill: {error[0]!r}"
    assert killed is not None, "no actor was running to kill"
    assert at < total, f"the kill came after every block was written ({at} of {total})"
    r = result["r"]
    rows = apr.read_rows(out)
    ids = rows.column("pair_id").to_pylist()
    assert sorted(ids) == list(range(1, len(pairs) + 1)), "a pair is missing or counted twice"
    assert len(pairs) == len(r.pair_metrics)
    if job == "patch":
        assert_grids_equal(r, want)
    else:
        assert_edges_equal(r, want)
    assert killed not in map_workers()


def test_import_without_ray_works_as_today(model_path):
    """In a fresh process where `import ray` fails: attrpatch imports and runs; attrpatch.ray says
    what to install."""
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import attrpatch\n"
        f"r = attrpatch.run({str(model_path)!r}, device='cpu')\n"
        "assert r.heads.shape == (3, 4), r.heads.shape\n"
        "try:\n"
        "    import attrpatch.ray\n"
        "except ImportError as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 3, p.stdout + p.stderr
    assert "pip install 'attrpatch[ray]'" in p.stdout


# --- edge scores ---------------------------------------------------------------------------------

def assert_edges_equal(got, want):
    """Same edges in the same order; every score within 1e-6 of the one-process score, relative to
    it or to the largest |score| (as the grids: some edges are exactly 0, others sums of large
    terms of both signs); baselines and warnings the one process's. Relative to each edge alone
    the small edges differ by up to 6%, but so does one process with batch_size=5 against its
    default: the runtime sums each call's pairs in float32, so the grouping into calls shows
    there (about 1.5e-7 of the largest |score|), not the combination."""
    assert got.edges == want.edges and got.nodes == want.nodes
    for key in ("method", "ig_steps", "metric", "layers", "heads", "kv_heads", "parallel"):
        assert getattr(got, key) == getattr(want, key), key
    for name in ("scores", "node_scores", "head_attribution"):
        g, w = getattr(got, name), getattr(want, name)
        assert g.shape == w.shape, f"{name}: shape {g.shape} vs {w.shape}"
        if w.size == 0:
            continue
        err = np.abs(g - w)
        bound = RTOL * np.maximum(np.abs(w), np.abs(w).max())
        worst = np.unravel_index(np.argmax(err / bound), err.shape)
        assert (err <= bound).all(), f"{name}{list(worst)}: {g[worst]} vs {w[worst]} (one process)"
    assert got.clean_metric == pytest.approx(want.clean_metric, rel=1e-9)
    assert got.corrupted_metric == pytest.approx(want.corrupted_metric, rel=1e-9)
    np.testing.assert_allclose(got.pair_metrics, want.pair_metrics, rtol=1e-6, atol=1e-7)
    assert got.warnings == want.warnings


@pytest.fixture(scope="module")
def one_process_edges(model_path, pairs_file):
    return attrpatch.edges(model_path, pairs_file, device="cpu")


@pytest.mark.parametrize("actors, block_size", [(1, 37), (1, 7), (2, 5), (2, 16)])
def test_edges_equal_one_process_for_uneven_blocks(ray_mod, model_path, pairs_file, one_process_edges, actors,
                                                   block_size):
    import attrpatch.ray as apr

    r, rows = apr.edges(pairs_file, model_path, actors=actors, block_size=block_size, device="cpu",
                        return_rows=True)
    assert_edges_equal(r, one_process_edges)
    # Had each block been normalised by its own baselines and the blocks averaged, the scores
    # would differ from one process's by far more than the tolerance.
    assert r.raw["pair_ids"] == list(range(1, 11)) + list(range(12, 39))
    table = rows.to_pandas()
    sums = [s for s in table["edges_raw"] if len(s)]
    assert len(sums) == len(table[table["block_meta"] != ""]) == -(-37 // block_size)
    metas = [json.loads(m) for m in table["block_meta"] if m]
    assert {m["graphs_built"] for m in metas} == {1}
    assert 1 <= len({m["worker_pid"] for m in metas}) <= actors
    # combine() on the rows gives the same result again.
    assert_edges_equal(apr.combine(rows), one_process_edges)


def test_edges_sum_over_blocks_not_average_of_blocks(ray_mod, model_path, pairs_file, one_process_edges, tmp_path):
    """The rows' edge sums over N * (CLEAN - CORR) of the whole set are the scores; each block
    normalised by its own baselines and then weighted by its pairs (a per-block aggregation) is
    not, by far more than the tolerance: the equality tests above can tell the two apart."""
    import pyarrow.parquet as pq

    import attrpatch.ray as apr

    rows = apr.pair_rows(pairs_file, model_path, method="edges", actors=2, block_size=9, device="cpu").take_all()
    clean = np.array([r["clean_metric"] for r in rows])
    corr = np.array([r["corrupted_metric"] for r in rows])
    sums = sum(np.asarray(r["edges_raw"]) for r in rows if len(r["edges_raw"]))
    scores = sums / (len(rows) * (clean.mean() - corr.mean()))
    scale = np.abs(one_process_edges.scores).max()
    assert np.abs(scores - one_process_edges.scores).max() <= RTOL * scale
    out = tmp_path / "out"
    apr.edges(pairs_file, model_path, out=out, actors=2, block_size=9, device="cpu")
    per_block = []
    for f in sorted((out / "blocks").glob("block-*.parquet")):
        t = pq.read_table(f).to_pydict()
        gap = np.mean(t["clean_metric"]) - np.mean(t["corrupted_metric"])
        per_block.append(len(t["pair_id"]) / 37 * np.asarray(t["edges_raw"][0]) / (len(t["pair_id"]) * gap))
    assert len(per_block) == 5
    assert np.abs(sum(per_block) - one_process_edges.scores).max() > 100 * RTOL * scale


def test_eap_ig_edges_equal_one_process(ray_mod, model_path, tmp_path):
    import attrpatch.ray as apr

    f = write_jsonl(tmp_path / "p.jsonl", ioi_pairs(11, seed=3))
    want = attrpatch.edges(model_path, f, ig_steps=3, device="cpu")
    got = apr.edges(f, model_path, ig_steps=3, actors=2, block_size=4, device="cpu")
    assert got.method == "EAP-IG-inputs" and got.ig_steps == 3
    assert_edges_equal(got, want)


def test_edges_out_folder_resumes_by_block(ray_mod, model_path, pairs_file, one_process_edges, tmp_path):
    import attrpatch.ray as apr

    out = tmp_path / "out"
    first = apr.edges(pairs_file, model_path, out=out, actors=2, block_size=8, device="cpu")
    assert_edges_equal(first, one_process_edges)
    files = block_files(out)
    assert len(files) == 5
    assert json.loads((out / "settings.json").read_text())["method"] == "edges"
    # A finished run reruns nothing; a lost block is the only one recomputed (same name).
    again = apr.edges(pairs_file, model_path, out=out, actors=1, block_size=8, device="cpu")
    assert_edges_equal(again, one_process_edges)
    assert block_files(out) == files
    lost = sorted(files)[2]
    (out / "blocks" / lost).unlink()
    time.sleep(0.01)
    third = apr.edges(pairs_file, model_path, out=out, actors=1, block_size=8, device="cpu")
    assert_edges_equal(third, one_process_edges)
    after = block_files(out)
    assert set(after) == set(files)
    assert {k: v for k, v in after.items() if k != lost} == {k: v for k, v in files.items() if k != lost}
    # Another block size over what is left: pairs are skipped by id, never counted twice.
    (out / "blocks" / lost).unlink()
    mixed = apr.edges(pairs_file, model_path, out=out, actors=2, block_size=3, device="cpu")
    assert_edges_equal(mixed, one_process_edges)
    # Another step count, or attribution, in the same folder is refused.
    with pytest.raises(attrpatch.InputError, match="its ig_steps is 1, this job's 2"):
        apr.edges(pairs_file, model_path, out=out, ig_steps=2, actors=1, device="cpu")
    with pytest.raises(attrpatch.InputError, match="holds results of a different job"):
        apr.attribute(pairs_file, model_path, out=out, actors=1, device="cpu")


def test_edges_cli_writes_the_cli_files(ray_mod, model_path, pairs_file, one_process_edges, tmp_path, cli):
    """`python -m attrpatch.ray edges`: edges.json and edges.csv as `attrpatch edges` writes them."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "attrpatch.ray", "edges", "--model", str(model_path), "--prompts",
           str(pairs_file), "--out", str(out), "--address", ray_mod.get_runtime_context().gcs_address,
           "--actors", "1", "--block-size", "10"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "EAP: 37 pairs, 262 edges" in p.stdout
    rust = tmp_path / "rust"
    subprocess.run([str(cli), "edges", "--model", str(model_path), "--prompts", str(pairs_file), "--device", "cpu",
                    "--out", str(rust)], capture_output=True, text=True, cwd=ROOT, check=True)
    got, want = json.loads((out / "edges.json").read_text()), json.loads((rust / "edges.json").read_text())
    assert sorted(got) == sorted(want)
    assert [(e["from"], e["to"]) for e in got["edges"]] == [(e["from"], e["to"]) for e in want["edges"]]
    g, w = np.array([e["score"] for e in got["edges"]]), np.array([e["score"] for e in want["edges"]])
    assert (np.abs(g - w) <= RTOL * np.maximum(np.abs(w), np.abs(w).max())).all()
    assert (out / "edges.csv").read_text().splitlines()[0] == "from,to,score"
    assert len((out / "edges.csv").read_text().splitlines()) == 263
    results = json.loads((out / "results.json").read_text())
    assert results["pair_ids"][:11] == list(range(1, 11)) + [12]
    files = block_files(out)
    assert len(files) == 4
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert block_files(out) == files


def test_edges_data_error_names_the_line(ray_mod, model_path, tmp_path, cli):
    import attrpatch.ray as apr

    f = _data_error_names_the_line(ray_mod, model_path, tmp_path, cli, "edges", attrpatch.edges, apr.edges)
    with pytest.raises(attrpatch.InputError, match="hook: edge scores are defined by"):
        apr.edges(f, model_path, hook="mlp", actors=1)
