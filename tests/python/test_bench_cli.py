"""`nibble bench`: the summary, the JSON report, and clear errors for what it cannot do."""
import json

MODEL = "models/fmnist_resnet.onnx"


def test_cpu_bench_writes_json_report(run_nibble, tmp_path):
    out = tmp_path / "bench.json"
    proc = run_nibble("bench", MODEL, "--batch", "1,3", "--duration", "0.2", "--min-runs", "2", "--json", out, check=True)
    assert "=== Performance summary (offline, batch 3) ===" in proc.stdout
    assert "Queries: " in proc.stdout
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
    assert "(singlestream, batch 1)" in proc.stdout and "SingleStream latency (p90)" in proc.stdout
    bad = run_nibble("bench", MODEL, "--scenario", "singlestream", "--batch", "4")
    assert bad.returncode == 2 and "runs batches of 1" in bad.stderr


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


def test_multistream_queries_carry_eight_images(run_nibble, tmp_path):
    out = tmp_path / "ms.json"
    proc = run_nibble("bench", MODEL, "--scenario", "multistream", "--duration", "0.1", "--iterations", "3",
                      "--json", out, check=True)
    assert "MultiStream latency (p99, 8 samples per query)" in proc.stdout
    r = json.loads(out.read_text())["results"][0]
    assert r["batch"] == 8 and r["images"] == 8 * r["queries"] >= 24


def test_server_scenario_searches_the_peak_rate(run_nibble, tmp_path):
    # A latency bound this build can meet: 50 ms, or 20 single-image latencies where one image
    # takes longer (a sanitizer build on a slow machine), so that the search finds valid rates
    # instead of halving towards rates whose 100 queries take minutes.
    single = tmp_path / "single.json"
    run_nibble("bench", MODEL, "--batch", "1", "--duration", "0.2", "--json", single, check=True)
    one_ms = json.loads(single.read_text())["results"][0]["latency_ms"]["median"]
    bound = max(50, int(20 * one_ms) + 1)
    out = tmp_path / "server.json"
    proc = run_nibble("bench", MODEL, "--scenario", "server", "--batch", "4", "--duration", "0.2",
                      "--latency-bound", str(bound), "--json", out, check=True)
    assert "Server: peak" in proc.stdout
    r = json.loads(out.read_text())["results"][0]
    assert r["max_batch"] == 4 and r["latency_bound_ms"] == bound and len(r["runs"]) == 7
    valid = [run for run in r["runs"] if run["valid"]]
    assert valid and r["peak_qps"] == max(run["target_qps"] for run in valid)
    for run in r["runs"]:
        assert run["queries"] >= 100 and 1 <= run["batches"] <= run["queries"]
        assert run["valid"] == (run["latency_ms"]["p99"] <= bound)
    # A fixed rate: one run.
    proc = run_nibble("bench", MODEL, "--scenario", "server", "--server-qps", "50", "--duration", "0.2", check=True)
    assert proc.stdout.count("target 50.0 qps") == 1


def test_server_scenario_stops_at_once_when_one_query_exceeds_the_bound(run_nibble, tmp_path):
    out = tmp_path / "server.json"
    proc = run_nibble("bench", MODEL, "--scenario", "server", "--batch", "4", "--duration", "0.2",
                      "--latency-bound", "0.000001", "--json", out, check=True)
    assert "no rate can be valid" in proc.stdout and "Server: peak" not in proc.stdout
    r = json.loads(out.read_text())["results"][0]
    assert r["peak_qps"] == 0 and r["runs"] == [] and r["single_query_ms"] > 0.000001


def test_inputs_shapes_threads_and_outputs(run_nibble, tmp_path):
    import numpy as np
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = run_nibble("bench", MODEL, "--loadInputs", f"input:{tmp_path / 'x.npy'}", "--duration", "0.05",
                      "--threads", "1", "--dumpOutput", check=True)
    assert "(offline, batch 3)" in proc.stdout and "threads: 1" in proc.stdout
    assert "Output 'logits': f32 [3, 10]" in proc.stdout
    # The dumped values are the model's outputs on those inputs.
    run_nibble("run", MODEL, "-i", tmp_path / "x.npy", "-o", tmp_path / "y.npy", check=True)
    y = np.load(tmp_path / "y.npy")
    lines = proc.stdout.split("Output 'logits': f32 [3, 10]\n")[1].splitlines()[:3]
    dumped = np.array([float(v) for line in lines for v in line.split()])
    np.testing.assert_allclose(dumped, y.ravel(), rtol=1e-5)
    proc = run_nibble("bench", MODEL, "--shapes", "input:5x1x28x28", "--duration", "0.05", check=True)
    assert "(offline, batch 5)" in proc.stdout
    for args, needle in [(["--shapes", "input:5x1x29x28"], "does not fit"), (["--shapes", "5xx1"], "not a shape"),
                         (["--loadInputs", "nope:x.npy"], "no input named 'nope'"),
                         (["--shapes", "input:5x1x28x28", "--batch", "2"], "batches of 5")]:
        bad = run_nibble("bench", MODEL, *args)
        assert bad.returncode == 2 and needle in bad.stderr, (args, bad.stderr)


def test_a_fixed_batch_model_runs_its_batch_by_default(run_nibble, tmp_path):
    import onnx
    m = onnx.load(MODEL)
    d = m.graph.input[0].type.tensor_type.shape.dim[0]
    d.ClearField("dim_param")
    d.dim_value = 2
    onnx.save(m, str(tmp_path / "fixed.onnx"))
    proc = run_nibble("bench", tmp_path / "fixed.onnx", "--duration", "0.05", check=True)
    assert "(offline, batch 2)" in proc.stdout and "batch 1)" not in proc.stdout
    bad = run_nibble("bench", tmp_path / "fixed.onnx", "--batch", "4")
    assert bad.returncode == 2 and "declared with batches of 2" in bad.stderr
