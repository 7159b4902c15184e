"""int8 on the CPU: `alexnet export --int8` and its gates, the int8 model in predict, evaluate and serve, and
`alexnet benchmark`'s table (docs/export.md, "int8")."""

from __future__ import annotations

import base64
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from support.helpers import FAST_TRAIN, built_once, invoke, one_error_line, solid_folder
from support.serving import Server, png_bytes
from typer.testing import CliRunner

from alexnet_cli.inference.benchmark import ROWS
from alexnet_cli.inference.int8 import int8_support


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> Path:
    """A run that tells dark from bright images (100% on its validation folder), and its int8 model, made once
    with the speed gate off (this test is about the accuracy gate and the model; speed is bench/int8.py's)."""
    def build(root: Path) -> None:
        solid_folder(root / "data" / "train", 16, seed=1)
        solid_folder(root / "data" / "val", 4, seed=2)
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(root)
            patch.setenv("ALEXNET_CACHE_DIR", str(root / "user-cache"))
            trained = invoke(CliRunner(), ["train", str(root / "data" / "train"), "--epochs", "5", "--output", "run",
                                           "--lr", "1e-3", *FAST_TRAIN])
            assert trained.exit_code == 0, trained.output
            exported = invoke(CliRunner(), ["export", "--weights", "run/best.pt", "--int8", "--min-speedup", "0"])
            assert exported.exit_code == 0, exported.output
            (root / "export.log").write_text(exported.output)

    return built_once(tmp_path_factory, "int8", build)


def test_export_int8_calibrates_on_the_runs_training_images_and_writes_what_it_measured(quantized):
    said = (quantized / "export.log").read_text()
    assert "calibrating on 32 images from the run's training folder" in said
    assert "measuring fp32 and int8 top-1 on the 8 images of the run's validation folder" in said
    assert int8_support().describe() in said  # the CPU's int8 support, and the choice made
    meta = json.loads((quantized / "run" / "best.int8.json").read_text())
    assert meta["format"] == "onnx-int8" and meta["class_names"] == ["bright", "dark"]
    report = meta["int8"]
    assert report["calibration"]["images"] == 32 and report["validation"]["images"] == 8
    assert report["top1"]["fp32"] == 1.0 and report["top1"]["drop_points"] <= 1.0
    assert report["cpu"]["reduce_range"] == int8_support().reduce_range
    assert report["images_per_second"]["int8"] > 0 and report["gates"] == {"max_drop": 1.0, "min_speedup": 0.0}
    assert (quantized / "run" / "best.int8.onnx").stat().st_size > 0


def test_the_gate_refuses_a_model_calibrated_on_the_wrong_images_and_writes_nothing(quantized, tmp_path, runner):
    run = tmp_path / "run"
    shutil.copytree(quantized / "run", run, ignore=shutil.ignore_patterns("best.int8.*"))
    black = tmp_path / "black"
    black.mkdir()
    from PIL import Image

    for i in range(4):  # all-black images: every activation range collapses, and real images saturate
        Image.new("RGB", (72, 72)).save(black / f"{i}.png")
    result = invoke(runner, ["export", "--weights", str(run / "best.pt"), "--int8", "--calib", str(black),
                             "--min-speedup", "0"])
    assert result.exit_code == 8, result.output
    line = one_error_line(result)
    assert "the int8 model was not written" in line and "over --max-drop 1" in line
    assert "top-1 fp32 100.00%, int8 " in line  # both accuracies (int8's collapses: 50% here)
    assert "calibrating on 4 images from --calib" in result.output
    assert not list(run.glob("best.int8.*"))


def test_the_speed_gate_names_the_cpu_and_writes_nothing(quantized, tmp_path, runner):
    run = tmp_path / "run"
    shutil.copytree(quantized / "run", run, ignore=shutil.ignore_patterns("best.int8.*"))
    result = invoke(runner, ["export", "--weights", str(run / "best.pt"), "--int8", "--calib-images", "4",
                             "--min-speedup", "1000"])
    assert result.exit_code == 8, result.output
    line = one_error_line(result)
    assert "under --min-speedup 1000" in line and f"on {int8_support().kind}" in line
    assert "--min-speedup 1 to write it anyway" in line
    assert not list(run.glob("best.int8.*"))


@pytest.mark.parametrize(("flags", "kind", "reduce_range"), [
    ({"avx2", "avx512bw", "avx512_vnni", "amx_int8"}, "AMX", False),
    ({"avx2", "avx512bw", "avx512_vnni"}, "VNNI", False),
    ({"avx2", "avx_vnni"}, "VNNI", False),
    ({"avx2", "avx512bw"}, "AVX-512 without VNNI", True),
    ({"avx2", "fma"}, "AVX2 without VNNI", True),
])
def test_int8_support_takes_reduce_range_where_products_can_saturate(flags, kind, reduce_range):
    support = int8_support(flags, "x86_64")
    assert (support.kind, support.reduce_range) == (kind, reduce_range)
    assert ("7 bits" in support.describe()) == reduce_range
    assert int8_support(set(), "aarch64").reduce_range is False


def test_evaluate_and_predict_take_the_int8_model_as_they_take_a_checkpoint(quantized, runner):
    run, val = quantized / "run", quantized / "data" / "val"
    meta = json.loads((run / "best.int8.json").read_text())
    evaluated = invoke(runner, ["evaluate", str(val), "--weights", str(run / "best.int8.onnx"), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    assert report["accuracy"] == meta["int8"]["top1"]["int8"] == 1.0  # the gate's figure is evaluate's
    assert report["class_names"] == ["bright", "dark"] and report["loss"] > 0
    assert "int8, the exported model's own" in evaluated.stderr
    image = next((val / "dark").iterdir())
    int8 = json.loads(invoke(runner, ["predict", str(image), "--weights", str(run / "best.int8.onnx"),
                                      "--json"]).stdout)[0]
    fp32 = json.loads(invoke(runner, ["predict", str(image), "--weights", str(run / "best.pt"), "--json"]).stdout)[0]
    assert int8["label"] == fp32["label"] == "dark"
    assert abs(int8["confidence"] - fp32["confidence"]) < 0.05
    assert abs(sum(entry["probability"] for entry in int8["top_k"]) - 1) < 1e-5
    explained = invoke(runner, ["predict", str(image), "--weights", str(run / "best.int8.onnx"), "--explain", "x"])
    assert explained.exit_code == 2
    assert "Grad-CAM" in one_error_line(explained)
    assert one_error_line(explained).endswith("use the checkpoint it was exported from, run/best.pt")


def test_an_onnx_model_without_its_json_is_refused_in_one_line(quantized, tmp_path, runner):
    lone = tmp_path / "lone.onnx"
    shutil.copyfile(quantized / "run" / "best.int8.onnx", lone)
    result = invoke(runner, ["predict", str(quantized / "data" / "val"), "--weights", str(lone)])
    assert result.exit_code == 4
    assert "has no lone.json beside it" in one_error_line(result)


def test_serve_answers_from_the_int8_model_with_the_same_protocol(quantized):
    server = Server(quantized / "run" / "best.int8.onnx")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            dark = (quantized / "data" / "val" / "dark").iterdir().__next__().read_bytes()
            answer = client.post("/predict", content=dark, headers={"content-type": "image/png"})
            assert answer.status_code == 200 and answer.json()["label"] == "dark"
            with ThreadPoolExecutor(8) as pool:  # concurrent requests, batched together
                many = list(pool.map(lambda seed: client.post("/predict", content=png_bytes(seed),
                                                              headers={"content-type": "image/png"}), range(8)))
            assert all(response.status_code == 200 for response in many)
            infer = client.post("/v2/models/alexnet/infer", json={"inputs": [{
                "name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(dark).decode()]}]})
            assert infer.status_code == 200, infer.text
            outputs = {output["name"]: output["data"] for output in infer.json()["outputs"]}
            assert outputs["label"] == ["dark"] and abs(sum(outputs["probabilities"]) - 1) < 1e-5
            refused = client.post("/predict?explain=1", content=dark, headers={"content-type": "image/png"})
            assert refused.status_code == 400 and "Grad-CAM" in refused.json()["error"]
            metadata = client.get("/v2/models/alexnet").json()
            assert metadata["platform"] == "onnxruntime_onnx" and metadata["parameters"]["precision"] == "int8"
    finally:
        server.stop()


def test_benchmark_prints_a_row_for_every_way_and_its_top1_is_evaluates(quantized, tmp_path, runner):
    run = quantized / "run"
    result = invoke(runner, ["benchmark", "--weights", str(run / "best.pt"), "--json"])
    assert result.exit_code == 0, result.output
    table = json.loads(result.stdout)
    rows = {row["name"]: row for row in table["rows"]}
    assert list(rows) == list(ROWS) and table["images"] == 8 and "validation folder" in table["data"]
    assert f"int8: {int8_support().kind}" in table["machine"]
    assert not rows["PyTorch fp16"]["ran"] and rows["PyTorch fp16"]["note"] == "needs a GPU"
    ran = [row for row in table["rows"] if row["ran"]]
    assert {"PyTorch fp32", "ONNX Runtime fp32", "ONNX Runtime int8", "TorchScript fp32"} <= {r["name"] for r in ran}
    for row in ran:
        assert row["size_mb"] > 0 and row["latency_ms_batch_1"] > 0 and row["images_per_second_batch_32"] > 0
    evaluated = json.loads(invoke(runner, ["evaluate", "--run", str(run), "--json"]).stdout)
    assert rows["PyTorch fp32"]["top1"] == evaluated["accuracy"]
    int8 = json.loads(invoke(runner, ["evaluate", str(quantized / "data" / "val"), "--weights",
                                      str(run / "best.int8.onnx"), "--json"]).stdout)
    assert rows["ONNX Runtime int8"]["top1"] == int8["accuracy"]
    assert str(run / "best.int8.onnx") in rows["ONNX Runtime int8"]["note"]
    assert rows["ONNX Runtime int8"]["size_mb"] < rows["ONNX Runtime fp32"]["size_mb"] / 3


@pytest.mark.parametrize(("args", "expected"), [
    (["--calib", "data"], "--calib go with --int8"),
    (["--int8", "--format", "torchscript"], "--int8 writes an ONNX model (ONNX Runtime runs it): drop --format "
                                            "torchscript"),
    (["--int8", "--max-drop", "-1"], "--max-drop and --min-speedup are not negative"),
])
def test_impossible_int8_options_are_refused_before_any_work(trained_run, runner, args, expected):
    result = invoke(runner, ["export", "--weights", str(trained_run / "best.pt"), *args])
    assert result.exit_code == 2 and expected in one_error_line(result)
    assert sorted(p.name for p in trained_run.iterdir()) == ["best.pt"]


def test_int8_without_a_run_folder_or_calib_says_what_to_give(trained_run, runner):
    result = invoke(runner, ["export", "--weights", str(trained_run / "best.pt"), "--int8"])
    assert result.exit_code == 2
    assert "is not in a run folder" in one_error_line(result) and "--calib DIR and --val DIR" in one_error_line(result)
