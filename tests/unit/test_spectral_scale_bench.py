"""bench/spectral_scale.py: one row per size (both methods' time and NMI), a size over the limit ends the sweep."""

import json


def test_rows_and_time_limit(tmp_path, bench_script):
    out = tmp_path / "s.json"
    bench_script("spectral_scale").main(["--sizes", "240", "--dim", "16", "--time_limit", "120", "--threads", "1", "--out", str(out)])
    res = json.loads(out.read_text())
    assert res["torch_threads"] == 1 and res["blas_threads"] == 1
    (row,) = res["rows"]
    assert row["torch_threads"] == 1  # set in the size's own process
    assert (row["N"], row["K"], row["speakers"]) == (240, 21, 12)
    assert 0.5 < row["kmeans_nmi"] <= 1.0 and 0.5 < row["spectral_nmi"] <= 1.0
    assert row["spectral_seconds"] >= 0.0 and row["peak_rss_gib"] > 0.0
    bench_script("spectral_scale").main(["--sizes", "240,480", "--dim", "16", "--time_limit", "0.01", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert rows == [{"N": 240, "timed_out_after_seconds": 0.01}]  # the larger size is skipped
