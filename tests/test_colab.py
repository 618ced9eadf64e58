"""vit_adapt.sweep.colab: the Colab notebook's runtime detection, install choice, data folder, sweep command and
output streaming, with fake device files and fake installed versions (no accelerator, no pip, no network)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from vit_adapt.errors import UserError
from vit_adapt.sweep import colab
from vit_adapt.sweep import grid as sweep_grid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = colab.Project(extras=frozenset({"test", "tpu", "cuda12"}),
                        minimums={"jax": "0.5", "tensorflow-cpu": "2.16"})
NO_EXTRAS = colab.Project(extras=frozenset({"test"}), minimums={"jax": "0.5"})
PY = "/usr/bin/python3"


def _glob(files):
  import fnmatch  # test helper: a fake /dev

  return lambda pattern: [f for f in files if fnmatch.fnmatch(f, pattern)]


@pytest.mark.parametrize("files,env,platform", [
    (["/dev/accel0", "/dev/accel1", "/dev/accel2", "/dev/accel3", "/dev/null"], {}, "tpu"),  # v2-8 / v3 / v4
    (["/dev/vfio/0", "/dev/vfio/vfio"], {}, "tpu"),                                        # v5e, v6e
    (["/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm"], {}, "gpu"),
    (["/dev/nvidiactl", "/dev/vfio/vfio"], {}, "cpu"),  # driver files without a device: no accelerator
    ([], {"COLAB_TPU_ADDR": "10.0.0.2:8470"}, "cpu"),
])
def test_detect_runtime(files, env, platform):
  runtime = colab.detect_runtime(env=env, glob_fn=_glob(files))
  assert runtime.platform == platform
  if files and platform == "tpu":
    assert str(sum(f.startswith(("/dev/accel", "/dev/vfio/0")) for f in files)) in runtime.evidence
  assert ("legacy TPU Node" in runtime.warning) == ("COLAB_TPU_ADDR" in env)


COLAB_TPU = {"jax": "0.5.2", "jaxlib": "0.5.1", "libtpu": "0.0.10.1", "tensorflow": "2.18.0"}
COLAB_GPU = {"jax": "0.5.2", "jaxlib": "0.5.1", "jax-cuda12-plugin": "0.5.1", "jax-cuda12-pjrt": "0.5.1",
             "tensorflow": "2.18.0"}


@pytest.mark.parametrize("platform,installed", [("tpu", COLAB_TPU), ("gpu", COLAB_GPU),
                                                ("gpu", {"jax": "0.5.0", "jaxlib": "0.5.0+cuda12.cudnn91"}),
                                                ("cpu", {"jax": "0.6.0", "jaxlib": "0.6.0"})])
def test_install_keeps_a_preinstalled_jax_that_drives_the_runtime(platform, installed, tmp_path):
  plan = colab.install_plan(colab.Runtime(platform, "fake"), installed, PROJECT, "/content/vit_adapt", PY,
                            constraints=str(tmp_path / "c.txt"))
  assert plan.command == [PY, "-m", "pip", "install", "-c", str(tmp_path / "c.txt"), "-e", "/content/vit_adapt"]
  jax_dists = {k: v for k, v in installed.items() if k != "tensorflow"}
  assert {k: v for k, v in plan.pins.items() if k != "tensorflow-cpu"} == jax_dists
  # The project's tensorflow-cpu would overwrite Colab's tensorflow: pinned to the same release.
  assert plan.pins.get("tensorflow-cpu") == installed.get("tensorflow")
  colab.write_constraints(plan)
  lines = (tmp_path / "c.txt").read_text().splitlines()
  assert sorted(lines) == sorted(f"{k}=={v}" for k, v in plan.pins.items())
  assert f"jax=={installed['jax']}" in lines and "keeps the preinstalled jax" in plan.describe()


@pytest.mark.parametrize("platform,installed,project,tail,why", [
    # Colab's TPU image with a CPU-only jax: the TPU extra, never a plain install.
    ("tpu", {"jax": "0.5.2", "jaxlib": "0.5.2"}, PROJECT, ["-e", "/r[tpu]"], "no tpu backend"),
    ("gpu", {"jax": "0.5.2", "jaxlib": "0.5.2"}, PROJECT, ["-e", "/r[cuda12]"], "no gpu backend"),
    # A checkout whose pyproject lacks the extra: pip would only warn, so jax's own extra is named.
    ("tpu", {}, NO_EXTRAS, ["-e", "/r", "jax[tpu]>=0.5"], "not installed"),
    ("gpu", {}, NO_EXTRAS, ["-e", "/r", "jax[cuda12]>=0.5"], "not installed"),
    # Too old for the project: replaced (keeping it would make pip's resolver fail).
    ("tpu", {"jax": "0.4.33", "jaxlib": "0.4.33", "libtpu-nightly": "0.1.dev2024"}, PROJECT, ["-e", "/r[tpu]"],
     "older than the required 0.5"),
    ("cpu", {}, PROJECT, ["-e", "/r"], "not installed"),
])
def test_install_uses_the_extra_otherwise(platform, installed, project, tail, why):
  plan = colab.install_plan(colab.Runtime(platform, "fake"), installed, project, "/r", PY)
  assert plan.command == [PY, "-m", "pip", "install"] + tail
  assert not plan.pins and why in plan.reason


def test_old_tensorflow_is_not_pinned():
  plan = colab.install_plan(colab.Runtime("tpu", "fake"), {**COLAB_TPU, "tensorflow": "2.15.1"}, PROJECT, "/r", PY)
  assert "tensorflow-cpu" not in plan.pins and plan.pins["libtpu"] == "0.0.10.1"


@pytest.mark.parametrize("version,minimum,ok", [("0.5", "0.5", True), ("0.5.0", "0.5", True), ("0.4.38", "0.5", False),
                                                ("0.10.0", "0.9", True), ("0.5.1+cuda12", "0.5.1", True),
                                                ("2.18.0rc1", "2.16", True), ("1.0", None, True)])
def test_at_least(version, minimum, ok):
  assert colab.at_least(version, minimum) is ok


def test_read_project_of_this_checkout(tmp_path):
  project = colab.read_project(ROOT)
  assert project.minimums["jax"] and colab.at_least(project.minimums["jax"], "0.4")
  assert "tensorflow-cpu" in project.minimums and "test" in project.extras
  (tmp_path / "pyproject.toml").write_text(textwrap.dedent("""\
      [project]
      name = "vit_adapt"
      dependencies = ["jax[cpu] >= 0.6.1, <1", "grain>=0.2.10", "tensorflow-cpu>=2.17; platform_system == 'Linux'"]
      [project.optional-dependencies]
      tpu = ["jax[tpu]>=0.6.1"]
      [project.urls]
      Homepage = "https://example.org/vit_adapt"
      Repository = "https://github.com/someone/vit_adapt"
      """))
  fake = colab.read_project(str(tmp_path))
  assert fake.minimums == {"jax": "0.6.1", "grain": "0.2.10", "tensorflow-cpu": "2.17"}
  assert fake.extras == {"tpu"} and fake.repo_url == "https://github.com/someone/vit_adapt"
  with pytest.raises(UserError, match="vit_adapt checkout"):
    colab.read_project(str(tmp_path / "missing"))


def test_notebook_repo_field_is_prefilled_from_pyproject():
  """The REPO_URL form field's default is `[project.urls]`'s repository ('' while pyproject sets none)."""
  nb = json.load(open(os.path.join(ROOT, "experiments", "colab_vtab.ipynb")))
  lines = [ln for c in nb["cells"] if c["cell_type"] == "code" for ln in "".join(c["source"]).splitlines()
           if ln.startswith("REPO_URL = ")]
  assert len(lines) == 1 and "#@param" in lines[0], lines
  assert lines[0].split("=", 1)[1].split("#")[0].strip() == json.dumps(colab.read_project(ROOT).repo_url)


def test_check_backend():
  tpu = colab.Runtime("tpu", "4 TPU chip(s)")
  colab.check_backend(tpu, "tpu", "/r", PROJECT, PY)
  colab.check_backend(colab.Runtime("cpu", "none"), "cpu", "/r", PROJECT, PY)
  with pytest.raises(UserError) as e:
    colab.check_backend(tpu, "cpu", "/content/vit_adapt", PROJECT, PY)
  assert f"{PY} -m pip install -e '/content/vit_adapt[tpu]'" in str(e.value) and "Restart session" in str(e.value)
  with pytest.raises(UserError, match=r"install -e /r 'jax\[cuda12\]>=0.5'"):
    colab.check_backend(colab.Runtime("gpu", "1 NVIDIA GPU(s)"), "cpu", "/r", NO_EXTRAS, PY)


def test_data_plan():
  gcs = colab.data_plan("gs://bucket/tfds/", local="/content/tfds")
  assert gcs.data_dir == "/content/tfds" and gcs.store == "gs://bucket/tfds" and not gcs.mount_drive
  assert gcs.fetch == ["gsutil", "-m", "rsync", "-r", "gs://bucket/tfds", "/content/tfds"]
  assert gcs.publish == ["gsutil", "-m", "rsync", "-r", "/content/tfds", "gs://bucket/tfds"]
  drive = colab.data_plan("/content/drive/MyDrive/vit_adapt/tfds")
  assert drive.data_dir == drive.store == "/content/drive/MyDrive/vit_adapt/tfds" and drive.mount_drive
  assert drive.fetch is None and drive.publish is None
  assert not colab.data_plan("/data/tfds").mount_drive
  for bad in ("", "s3://bucket/x"):
    with pytest.raises(UserError, match="DATA_DIR|supported"):
      colab.data_plan(bad)


def test_sweep_command_is_what_the_sweep_parses():
  overrides = {"dataset.data_dir": "/content/drive/MyDrive/my data/tfds", "model.init": "vit-b16-in21k",
               "train.steps": 3}
  cmd = colab.sweep_command(["configs/linear_vtab.py", "configs/dyt_vtab.py"], "all", [0, 1, 2], "/runs/vtab",
                            overrides, python="python")
  assert cmd[:5] == ["python", "-m", "vit_adapt.sweep", "--config=configs/linear_vtab.py",
                     "--config=configs/dyt_vtab.py"]
  flags = dict(a[2:].split("=", 1) for a in cmd[3:])
  assert flags["tasks"] == "all" and flags["workdir"] == "/runs/vtab" and flags["progress_every_s"] == "30"
  assert sweep_grid.parse_grid(flags["grid"]) == [("seed", [0, 1, 2])]
  assert sweep_grid.parse_overrides(flags["overrides"]) == overrides
  assert sweep_grid.parse_tasks(colab.sweep_command(["c.py"], ["vtab/dtd", "vtab/eurosat"], [0], "/w", {})[4]
                                .split("=", 1)[1]) == ["vtab/dtd", "vtab/eurosat"]
  with pytest.raises(UserError, match="no task"):
    colab.sweep_command(["c.py"], [], [0], "/w", {})


_CHILD = textwrap.dedent("""\
    import os, sys, time
    log = os.path.join(sys.argv[1], "vtab", "dtd", "seed=0", "log.txt")
    os.makedirs(os.path.dirname(log))
    print("[sweep] start")
    for i in range(3):
      sys.stderr.write(f"\\r{i + 1}/3 downloading")
    sys.stderr.write("\\n")
    with open(log, "a") as f:
      f.write("step 1 loss 2.3\\n"); f.flush(); time.sleep(0.3)
      f.write("step 2 loss 1.9\\nunfinished")
    print("caf\\u00e9 done 1/1")
    sys.exit(int(sys.argv[2]))
    """)


def test_stream_shows_output_and_followed_logs_as_they_come(tmp_path):
  old = tmp_path / "old" / "log.txt"
  old.parent.mkdir()
  old.write_text("an earlier invocation\n")
  written = []
  result = colab.stream([sys.executable, "-c", _CHILD, str(tmp_path), "0"], follow=str(tmp_path / "**" / "log.txt"),
                        write=written.append, poll_s=0.05)
  assert written[0].startswith("$ ") and "-c" in written[0]
  text = "".join(written[1:])
  # Progress-bar updates keep their carriage returns (the notebook redraws them in place).
  assert "\r1/3 downloading" in text or "1/3 downloading\r" in text
  assert text.index("[sweep] start") < text.index("café done 1/1")
  assert "[vtab/dtd/seed=0] step 1 loss 2.3\n" in text and "[vtab/dtd/seed=0] step 2 loss 1.9\n" in text
  assert "unfinished" not in text and "an earlier invocation" not in text
  assert result.returncode == 0 and "café done 1/1" in result.stdout and "step 1" not in result.stdout


def test_stream_failure(tmp_path):
  with pytest.raises(UserError, match="exit code 3(.|\n)*café done"):
    colab.stream([sys.executable, "-c", _CHILD, str(tmp_path / "a"), "3"], write=lambda s: None, poll_s=0.05)
  result = colab.stream([sys.executable, "-c", _CHILD, str(tmp_path / "b"), "3"], check=False,
                        write=lambda s: None, poll_s=0.05)
  assert result.returncode == 3


def test_importable_before_install():
  """The notebook imports the module from a fresh clone before pip runs: standard library only, no jax."""
  out = subprocess.run(
      [sys.executable, "-c", "import sys, vit_adapt.sweep.colab; print(sorted(m for m in sys.modules if m.split('.')[0] "
       "in ('jax', 'numpy', 'absl', 'ml_collections', 'flax', 'tensorflow')))"],
      cwd=ROOT, capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"
