"""`maple-zoo bench`: the JSON a user tracks across commits (speed itself is never asserted here)."""

import json

import pytest
from typer.testing import CliRunner

from maple_zoo.cli import app


def bench(*args: str) -> dict:
    out = CliRunner().invoke(app, ["bench", *args, "--json"])
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout)


def test_train_step_reports_time_work_and_the_plain_comparison():
    out = bench("train-step", "--arch", "MZ-Tiny", "--depth", "3", "--classes", "6", "--batch", "2", "--steps", "2", "--compare")
    assert (out["arch"], out["classes"], out["batch"], out["precision"], out["device"]) == ("MZ-Tiny", 6, 2, "fp32", "cpu")
    assert len(out["step_times"]) == 2 and out["seconds_per_step"] > 0
    assert out["gflop_per_second"] == pytest.approx(out["gflop_per_step"] / out["seconds_per_step"], rel=0.01)
    # the optimised path does strictly less work than the plain one (77-token text, every row in the last block)
    assert 0 < out["gflop_per_step"] < out["plain_gflop_per_step"]
    assert out["speedup_vs_plain"] == pytest.approx(out["plain_seconds_per_step"] / out["seconds_per_step"], rel=0.01)


def test_eval_reports_throughput_over_a_label_set():
    out = bench("eval", "--arch", "MZ-Tiny", "--depth", "3", "--classes", "20", "--batch", "4", "--batches", "2", "--compare")
    assert out["classes"] == 20 and out["images_per_second"] > 0 and out["plain_images_per_second"] > 0


def test_matmul_reports_the_ceiling_per_shape_and_precision():
    out = bench("matmul", "--tokens", "32", "--width", "16", "--mlp", "64", "--repeats", "2")
    assert set(out["fp32_gflop_per_second"]) == {"qkv", "out_proj", "mlp_fc", "mlp_proj"}
    assert out["fp32_best_gflop_per_second"] == max(out["fp32_gflop_per_second"].values()) > 0
    assert out["bf16_best_gflop_per_second"] > 0
