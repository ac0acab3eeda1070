# bench/cuda_decode_trace.py's reading of the timeline records, on records made up here with
# known times (the records themselves come from a METALLIC_CUDA_TRACE=ON build on a GPU).
import importlib.util
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "cuda_decode_trace.py"


def load_script():
    spec = importlib.util.spec_from_file_location("cuda_decode_trace", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_records_are_grouped_into_launches_and_steps(tmp_path):
    mod = load_script()
    assert mod.RECORD.itemsize == 64  # TraceRec in csrc/backend/cuda/kernels.h
    # 8 steps 900 us apart; in each, three launch sites (staged, attention, staged; the last
    # two share no tag with the first) whose blocks wait, then finish, at set offsets.
    sites = [(1, 0x1000, 0.0, 5), (3, 0x2000, 6.0, 3), (1, 0x3000, 13.5, 4)]
    recs = []
    for step in range(8):
        base = 10**9 + step * 900_000
        for kind, tag, start_us, blocks in sites:
            for b in range(blocks):
                r = np.zeros(1, mod.RECORD)
                t0 = base + int(start_us * 1000) + 10 * b
                r["t"][0] = [t0, t0 + 1000 - 10 * b, t0 + 1500, t0 + 1600, t0 + 4000 + 100 * b, 0]
                r["tag"], r["kind"], r["block"] = tag, kind, b
                recs.append(r)
    rng = np.random.default_rng(1)
    data = np.concatenate(recs)[rng.permutation(len(recs))]  # blocks finish in any order
    path = tmp_path / "trace.bin"
    data.tofile(path)
    period, rows = mod.analyze(str(path))
    assert abs(period - 900.0) < 1e-6
    assert [r["kind"] for r in rows] == ["staged", "attn", "staged"]
    assert [r["blocks"] for r in rows] == [5, 3, 4]
    # Launch 0: every block's wait returns at +1.0 us; the last block (4, started 40 ns late)
    # is done at +4.44 us.
    assert abs(rows[0]["wait"] - 1.0) < 1e-6 and abs(rows[0]["post"] - 3.44) < 1e-6
    # Launch 1 waits at 7.0, 2.56 us after launch 0's last exit, and is done at 10.22.
    assert abs(rows[1]["gap"] - 2.56) < 1e-6 and abs(rows[1]["post"] - 3.22) < 1e-6
    assert abs(rows[2]["gap"] - (14.5 - 10.22)) < 1e-6


def test_staged_blocks_by_layer_slot(tmp_path):
    mod = load_script()
    # 6 steps of one "layer" of three launches: staged (slot 0), attention (slot 1, left out),
    # staged (slot 2). Block b of a staged launch enters 2 us before the first wait return, waits
    # 10 * b ns late, has its input at +1.0 us and its weights at +1.5 us, and ends at
    # +(3.0 + 0.1 b) us: its dot phase is 1.5 + 0.1 b us.
    recs = []
    for step in range(6):
        base = 10**9 + step * 500_000
        for slot, (kind, tag) in enumerate([(1, 0x1000), (3, 0x2000), (1, 0x3000)]):
            w0 = base + slot * 20_000
            for b in range(5):
                r = np.zeros(1, mod.RECORD)
                r["t"][0] = [w0 - 2000, w0 + 10 * b, w0 + 1000, w0 + 1500, w0 + 3000 + 100 * b, 0]
                r["tag"], r["kind"], r["block"] = tag, kind, b
                recs.append(r)
    path = tmp_path / "trace.bin"
    np.concatenate(recs).tofile(path)
    table = mod.blocks(str(path), 3)
    assert sorted(table) == [0, 2]
    for slot in (0, 2):
        p50 = table[slot][1]
        np.testing.assert_allclose(p50, [-2.0, 0.02, 1.0, 1.5, 3.2, 1.7], atol=1e-9)
        np.testing.assert_allclose(table[slot][3][5], 1.9, atol=1e-9)  # p99: the slowest blocks (6 of 30)
