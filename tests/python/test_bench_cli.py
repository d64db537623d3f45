"""`nibble bench`: the summary, the JSON report, and clear errors for what it cannot do."""
import json

MODEL = "models/fmnist_resnet.onnx"


def test_cpu_bench_writes_json_report(run_nibble, tmp_path):
    out = tmp_path / "bench.json"
    proc = run_nibble("bench", MODEL, "--batch", "1,3", "--duration", "0.2", "--min-runs", "2", "--json", out, check=True)
    assert "=== Performance summary (batch 3) ===" in proc.stdout
    assert "percentile(95%)" in proc.stdout
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["scenario"] == "offline"
    assert [r["batch"] for r in report["results"]] == [1, 3]
    for r in report["results"]:
        assert r["queries"] >= 2 and r["images"] == r["queries"] * r["batch"]
        lat = r["latency_ms"]
        assert 0 < lat["min"] <= lat["median"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert r["images_per_second"] > 0


def test_singlestream_runs_batch_one(run_nibble):
    proc = run_nibble("bench", MODEL, "--scenario", "singlestream", "--duration", "0.1", "--min-runs", "2", check=True)
    assert "(batch 1)" in proc.stdout
    bad = run_nibble("bench", MODEL, "--scenario", "singlestream", "--batch", "4")
    assert bad.returncode == 2 and "singlestream scenario runs batch 1" in bad.stderr


def test_cuda_errors_are_one_line(run_nibble, tmp_path):
    # Without a GPU (or without the CUDA backend) the error says so; with one, this FP32 model
    # is refused because the CUDA backend runs integer models. Never a crash, never a report.
    out = tmp_path / "r.json"
    proc = run_nibble("bench", MODEL, "--device", "cuda", "--json", out)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "CUDA" in proc.stderr
    assert not out.exists()


def test_profile_needs_cuda(run_nibble):
    proc = run_nibble("bench", MODEL, "--profile", "--duration", "0.1")
    assert proc.returncode == 2 and "--profile" in proc.stderr
