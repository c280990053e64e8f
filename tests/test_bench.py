"""The benchmark harness end to end on tiny models and a short input (nothing here asserts on a time).

``run_bench`` makes the model files (tests/reference_models.py, through benchmarks/make_models.py), times
rvc-mlx and the PyTorch reference each in its own process, and writes the report. What is checked: both
sides ran on the same files and input (their outputs agree to the whole-pipeline parity tolerance), every
stage and memory figure is reported, the table and chart are written, and a second run merges into them.
"""

from __future__ import annotations

import json
import math

import pytest

from rvc_mlx import bench  # the package's __init__ loads the BLAS before anything imports mlx.core
from rvc_mlx.errors import RVCError

pytest.importorskip("rvc.modules.vc.pipeline")

TOL = 2e-4  # as tests/test_pipeline.py: max|ours - ref| / max|ref| on the 16-bit output


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    status = bench.run_bench([0.5], profile="tiny", repeats=1, machine="test", out_dir=str(d / "out"),
                             models_dir=str(d / "models"), warmup=True, warmup_seconds=(0.6, 1.2),
                             kernel_cache="fresh")
    return status, d


def test_both_sides_run_on_the_same_models_and_input(report):
    status, d = report
    assert status == 0
    data = json.loads((d / "out" / "results-cpu.json").read_text())
    (entry,) = data["runs"]
    assert entry["seconds"] == 0.5
    assert {r["impl"] for r in entry["results"]} == {"rvc-mlx", "torch"}
    assert entry["output_rel_err"] <= TOL
    for r in entry["results"]:
        for call in ("cold", "warm"):
            assert set(r[call]) == {*bench.STAGES, "total"}
            assert all(math.isfinite(v) for v in r[call].values())
            assert math.isclose(sum(r[call][s] for s in bench.STAGES), r[call]["total"], rel_tol=1e-6)
            assert all(r[call][s] > 0 for s in ("f0", "hubert", "synth"))
        assert r["peak_rss_mb"] >= r["rss_after_load_mb"] > 0
        assert r["gpu_peak_mb"] is None and len(r["warm_totals"]) == 1
        assert set(r["load"]) == {"cold", "warm"}
    ours = next(r for r in entry["results"] if r["impl"] == "rvc-mlx")
    assert ours["precision"] == "float32"
    memory = ours["memory"]
    for call in ("cold", "warm"):
        for kind in ("mlx", "rss"):
            peaks = memory[call][kind]
            assert set(peaks) == {*bench.STAGES, "total"} and peaks["total"] == max(peaks.values())
            # every stage holds at least the loaded weights; HuBERT and the synthesizer allocate more
            assert all(peaks[s] >= memory["mlx_active_after_load_mb"] * 0.99 for s in bench.STAGES[:-1]) \
                or kind == "rss"
        assert memory[call]["mlx"]["hubert"] > memory["mlx_active_after_load_mb"]
        assert 0 < memory[call]["rss"]["total"] <= ours["peak_rss_mb"] + 1
    assert memory["load"]["mlx"] >= memory["mlx_active_after_load_mb"] > 0 and memory["mlx_cache_mb"] >= 0
    assert ours["mlx_peak_mb"] >= memory["cold"]["mlx"]["total"]
    warmup = ours["warmup"]
    assert [length for length, _ in warmup["runs"]] == [0.6, 1.2] and warmup["seconds"] > 0
    assert set(warmup["first_call"]) == {*bench.STAGES, "total"} and warmup["first_call"]["total"] > 0
    torch_side = next(r for r in entry["results"] if r["impl"] == "torch")
    assert torch_side["device"] == "cpu" and torch_side["threads"] == bench._cores()


def test_table_and_chart_are_written(report):
    _, d = report
    md = (d / "out" / "results-cpu.md").read_text()
    for row in ("| 0.5 s | rvc-mlx |", "| 0.5 s | torch |", "| 0.5 s | rvc-mlx ÷ torch | warm |"):
        assert row in md
    assert "max|rvc-mlx − torch| / max|torch|" in md
    assert "| 0.5 s | cold | MLX |" in md and "| 0.5 s | warm | RSS |" in md  # memory per stage
    assert "## First call (rvc-mlx)" in md and "| 0.5 s | float32 |" in md
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (d / "out" / "results-cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_later_run_merges_into_the_report(report):
    _, d = report
    out = d / "out"
    data = json.loads((out / "results-cpu.json").read_text())
    info = {k: v for k, v in data.items() if k != "runs"}
    later = {**data["runs"][0], "seconds": 7.0}
    bench.write_report(out, {**info, "date": "later"}, [later])
    merged = json.loads((out / "results-cpu.json").read_text())["runs"]
    assert [e["seconds"] for e in merged] == [0.5, 7.0] and merged[1]["date"] == "later"
    bench.write_report(out, {**info, "date": "again"}, [{**later, "seconds": 0.5}])
    merged = json.loads((out / "results-cpu.json").read_text())["runs"]
    assert [(e["seconds"], e["date"]) for e in merged] == [(0.5, "again"), (7.0, "later")]
    assert "| 7 s | torch |" in (out / "results-cpu.md").read_text()


def test_bad_options_are_refused():
    with pytest.raises(RVCError, match="device"):
        bench.run_bench([1.0], device="tpu")
    with pytest.raises(RVCError, match="repeats"):
        bench.run_bench([1.0], repeats=0)
    with pytest.raises(RVCError, match="precision"):
        bench.run_bench([1.0], precision="int8")


def test_a_precision_the_pipeline_lacks_is_refused_clearly(report, monkeypatch):
    from rvc_mlx.pipeline import VoiceConverter

    def load_without_precision(cls, voice, *, hubert=None, rmvpe=None, index=None, index_mode="exact",
                               rmvpe_padding="reflect"):
        raise AssertionError("not reached")

    monkeypatch.setattr(VoiceConverter, "load", classmethod(load_without_precision))
    _, d = report
    manifest = json.loads((d / "models" / "manifest.json").read_text())
    with pytest.raises(RVCError, match="no precision= option"):
        bench._load_converter({"precision": "float16", "index_mode": "ivf"}, d / "models", manifest)


def test_reference_is_available_here():
    assert bench.reference_problem() is None
