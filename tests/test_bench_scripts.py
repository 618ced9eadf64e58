"""experiments/bench_vs_pytorch.py and experiments/accelerator_suite.py run end to end with tiny settings (so the
commands the README gives do not rot), a failing row becomes an error cell without ending the run, and MFU uses
the peak table. Timings are never asserted; only that cells are numbers or the expected error."""

import math
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))

import accelerator_suite  # noqa: E402
import backend_checks  # noqa: E402
import bench_timing  # noqa: E402

NUMBER_CELL = re.compile(r"^\d+(\.\d+)? \(\d+(\.\d+)?\)$")  # 'best (median)'


def _rows(text: str) -> dict[str, list[str]]:
  """Markdown table rows by their first cell(s), ignoring header and separator."""
  out = {}
  for line in text.splitlines():
    if line.startswith("| ") and not line.startswith("|---"):
      cells = [c.strip() for c in line.strip().strip("|").split("|")]
      out.setdefault(cells[0], []).append(cells)
  return out


def test_peak_table_and_mfu():
  assert accelerator_suite.peak_flops("NVIDIA H200", "bfloat16") == 989e12
  assert accelerator_suite.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
  assert accelerator_suite.peak_flops("NVIDIA A100-SXM4-40GB", "bfloat16") == 312e12
  assert accelerator_suite.peak_flops("TPU v5 lite", "bfloat16") == 197e12
  assert accelerator_suite.peak_flops("TPU v5p", "bfloat16") == 459e12
  assert accelerator_suite.peak_flops("TPU v6 lite", "bfloat16") == 918e12
  assert accelerator_suite.peak_flops("TPU v4", "float32") is None
  assert accelerator_suite.peak_flops("cpu", "bfloat16") is None
  # 17.5 GMACs at 1000 images/s = 35 TFLOP/s achieved.
  assert math.isclose(accelerator_suite.mfu(17.5, 1000.0, 350e12), 0.1)
  assert accelerator_suite.mfu(17.5, 1000.0, None) is None
  assert accelerator_suite.mfu(17.5, math.nan, 350e12) is None


def test_failing_build_becomes_an_error_cell():
  def broken():
    raise RuntimeError("no such model\nsecond line")
  bad = bench_timing.prepare("broken", broken)
  good = bench_timing.prepare("good", lambda: ((lambda: 1), {"gmacs": 1.0}), batch=4)
  bench_timing.interleaved([bad, good], rounds=3, max_seconds=10.0)
  assert bad.cell() == "error: RuntimeError: no such model" and not bad.ok
  assert good.ok and len(good.times) == 3 and NUMBER_CELL.match(good.cell())
  assert bench_timing.ratio_cell(good, bad) == "—"
  # A timer stops once its timed calls reach max_seconds (after one call).
  capped = bench_timing.prepare("capped", lambda: ((lambda: 1), {}))
  bench_timing.interleaved([capped], rounds=50, max_seconds=0.0)
  assert len(capped.times) == 1


@pytest.mark.slow
def test_accelerator_suite_tiny(tmp_path):
  out = tmp_path / "suite.md"
  text = accelerator_suite.main(["--variant=Ti/16", "--image_size=32", "--batches=2", "--rounds=2",
                                 "--programs=dense,no_such_program", "--train_methods=adapter", "--dtype=float32",
                                 f"--out={out}"])
  assert out.read_text() == text
  rows = _rows(text)
  dense = next(r for r in rows["inference"] if r[1] == "dense")
  train = rows["train"][0]
  bogus = next(r for r in rows["inference"] if r[1] == "no_such_program")
  assert dense[3:5] == ["float32", "2"] and NUMBER_CELL.match(dense[5]), dense
  assert float(dense[6]) > 0 and dense[7] == "—"  # CPU: not in the peak table
  assert train[1] == "adapter" and NUMBER_CELL.match(train[5]), train
  # The training step (forward + backward) does more multiply-adds per image than the forward pass.
  assert float(train[6]) > 1.5 * float(dense[6])
  assert bogus[5].startswith("error: unknown program")


@pytest.mark.slow
def test_bench_vs_pytorch_tiny(tmp_path):
  pytest.importorskip("torch")
  import bench_vs_pytorch
  out = tmp_path / "bench.md"
  text = bench_vs_pytorch.main(["--variant=Ti/16", "--image_size=32", "--batch=2", "--rounds=2", "--programs=dense",
                                "--official_dyt=/nonexistent", f"--out={out}", "--max_seconds=5"])
  assert out.read_text() == text
  dense = _rows(text)["dense"][0]
  assert dense[1] == "float32" and NUMBER_CELL.match(dense[2]), dense
  assert dense[3].startswith("timm vit_tiny_patch16_224 (eager fp32)") and NUMBER_CELL.match(dense[4]), dense
  assert NUMBER_CELL.match(dense[5]) and float(dense[6]) > 0
  micro = _rows(text)
  for op in bench_vs_pytorch.MICRO:
    assert NUMBER_CELL.match(micro[op][0][1].split(",")[0]), micro[op]


@pytest.mark.slow
def test_backend_checks_tiny(tmp_path):
  out = tmp_path / "checks.md"
  text = backend_checks.main(["--variant=Ti/16", "--image_size=32", "--attention_batch=2", "--programs=dense",
                              f"--out={out}"])
  assert out.read_text() == text + "\n"
  row = next(line for line in text.splitlines() if line.startswith("| dense |"))
  here, on_cpu, optimised = (cell.strip() for cell in row.split("|")[2:5])
  # On the CPU the lowered program counts the same on each backend; the optimised CPU module's matmul/conv part is
  # counted too (LayerNorms are counted on the lowered program only).
  assert float(here) > 0 and here == on_cpu, row
  assert 0 < float(optimised.split()[0]) < float(here), row
  assert "argmax agreement" in text


@pytest.mark.slow
def test_bench_segmentation_tiny():
  import bench_segmentation
  text = bench_segmentation.main(["--variant=Ti/16", "--image_size=64", "--depth=4", "--rounds=1",
                                  "--head_channels=16", "--modes=capacity,threshold"])
  rows = {name: r[0] for name, r in _rows(text).items()}
  assert list(rows) == ["backbone", "dense ViT", "DyT capacity", "DyT threshold"], list(rows)
  dense = rows["dense ViT"]
  assert dense[1] == "1.000" and dense[-1] == "-" and dense[6] == "1.00x (1.00x)", dense
  head = float(dense[3])
  for name in ("DyT capacity", "DyT threshold"):
    row = rows[name]
    assert abs(float(row[1]) - 0.5) < 0.05, row  # routers calibrated to half the patch tokens
    # DyT's backbone does fewer multiply-adds than the dense one; the head is the same program for both.
    ratio = float(row[2]) / float(dense[2])
    assert 0.5 < ratio < 1.0, row
    assert float(row[3]) == head and head > 0, row
    assert row[4] == f"{head / (head + float(row[2])):.0%}", row
    assert NUMBER_CELL.match(row[5]) and re.match(r"^\d+\.\d\dx \(\d+\.\d\dx\)$", row[6]), row
    assert re.match(r"^\d+\.\d\dx (met|NOT met)$", row[7]), row
  assert rows["DyT capacity"][1] == "0.500"  # top-k: exactly k of the 16 patch tokens


def test_bench_dyt_bound_times_the_parts_it_names():
  import bench_dyt_bound
  text = bench_dyt_bound.main(["--variant=Ti/16", "--image_size=64", "--batch=8", "--rounds=1"])
  rows = {name: r[0] for name, r in _rows(text).items()}
  assert list(rows) == ["part", "attention branch", "MLP, every row", "MLP, active rows", "router + adapter"]
  b, n, d, f, active = 8, 17, 192, 768, 8 * (1 + 8)  # per image: the class token + half of the 16 patches
  expected = {"attention branch": 4 * b * n * d * d + 2 * b * n * n * d, "MLP, every row": 2 * b * n * d * f,
              "MLP, active rows": 2 * active * d * f, "router + adapter": b * n * d + 2 * b * n * d * 64}
  for name, macs in expected.items():
    assert float(rows[name][1]) == pytest.approx(macs / 1e9, rel=0.01), (name, rows[name])  # + LayerNorm
    assert re.match(r"^\d+\.\d\d \(\d+\.\d\d\)$", rows[name][2]), rows[name]
  assert "bound on DyT's speed-up with a free dispatch" in text


def test_bench_pack_step_times_the_programs_the_trainers_compiled():
  import bench_pack_step
  text = bench_pack_step.main(["--runs=2", "--rounds=1", "--set=model.image_size=8"])
  rows = {name: r[0] for name, r in _rows(text).items()}
  assert list(rows) == ["program", "one run (the trainer's step)", "pack of 2 runs (one step)"]
  for row in list(rows.values())[1:]:
    assert all(re.match(r"^\d+\.\d \(\d+\.\d\)$", cell) for cell in row[1:]), row
  pack_ms = float(rows["pack of 2 runs (one step)"][1].split()[0])
  per_run = float(rows["pack of 2 runs (one step)"][2].split()[0])
  assert per_run == pytest.approx(pack_ms / 2, abs=0.06)
  assert re.search(r"a pack step costs \d+\.\d\d solo steps", text)


def test_bench_cpu_attention_compares_group_budgets_with_the_ungrouped_op():
  import bench_cpu_attention
  text = bench_cpu_attention.main(["--shapes=2x17", "--budgets_mib=0,0.001", "--heads=3", "--head_dim=8",
                                   "--rounds=1"])
  rows = [r for name, rs in _rows(text).items() if name != "images x tokens" for r in rs]
  assert [r[1:3] for r in rows] == [["0 (ungrouped)", "6"], ["0.001", "1"]]  # 1 KiB < one pair's 17x17 logits
  for r in rows:
    assert float(r[5]) < 1e-6, r  # the same values as the ungrouped op
