"""Multi-process launch detection (`vit_adapt.train.cluster.detect`): a pure function of an environment mapping and
probes of the machine, checked launcher by launcher and against jax's own cluster environments."""

import os
from unittest import mock

import pytest
from jax._src import clusters
from jax._src.clusters import cloud_tpu_cluster

from vit_adapt.errors import UserError
from vit_adapt.train import cluster


def probes(tpu_vm=False, gce_processes=None, gpus=0):
  def unexpected():
    raise AssertionError("the GCE metadata server must not be asked here")

  return cluster.Probes(tpu_vm=lambda: tpu_vm,
                        gce_tpu_processes=unexpected if gce_processes is None else lambda: gce_processes,
                        gpu_count=lambda: gpus)


SLURM = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "node[001-002]", "SLURM_NTASKS": "2",
         "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_NODEID": "1", "SLURM_STEP_TASKS_PER_NODE": "1(x2)"}
OMPI4 = {"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1,10.148.0.1:34911", "OMPI_COMM_WORLD_SIZE": "4",
         "OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}
GKE = {"TPU_WORKER_HOSTNAMES": "w-0,w-1,w-2,w-3", "TPU_WORKER_ID": "2", "MEGASCALE_NUM_SLICES": "1"}


def test_a_plain_process_is_single():
  assert cluster.detect({}, probes()) is None
  assert cluster.detect({"HOME": "/root", "CUDA_VISIBLE_DEVICES": "0"}, probes(gpus=8)) is None


def test_explicit_variables():
  env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:8476", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"}
  launch = cluster.detect(env, probes())
  assert launch == cluster.Launch("explicit", {"coordinator_address": "10.0.0.1:8476", "num_processes": 4,
                                               "process_id": 2, "cluster_detection_method": "deactivate"})
  # The count and id may come from the launcher (Open MPI 5 does not publish its address: the user sets it).
  ompi5 = {k: v for k, v in OMPI4.items() if k != "OMPI_MCA_orte_hnp_uri"}
  launch = cluster.detect({"JAX_COORDINATOR_ADDRESS": "node0:8476", **ompi5}, probes(gpus=4))
  assert (launch.kind, launch.init_kwargs["num_processes"], launch.init_kwargs["process_id"]) == ("explicit", 4, 3)
  assert launch.init_kwargs["local_device_ids"] == [2, 3]  # 4 GPUs, 2 ranks on the node, local rank 1
  launch = cluster.detect({"JAX_COORDINATOR_ADDRESS": "node001:9000", **SLURM}, probes())
  assert (launch.init_kwargs["num_processes"], launch.init_kwargs["process_id"]) == (2, 1)


@pytest.mark.parametrize("env, words", [
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1"}, "host:port"),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:8476"}, "JAX_NUM_PROCESSES and JAX_PROCESS_ID"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, "not in 0..1"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"}, "JAX_NUM_PROCESSES='two'"),
    ({k: v for k, v in OMPI4.items() if k != "OMPI_MCA_orte_hnp_uri"}, "JAX_COORDINATOR_ADDRESS=<host of rank 0>"),
])
def test_misconfigured_jobs_say_what_to_set(env, words):
  with pytest.raises(UserError, match=words.replace("(", r"\(").replace(")", r"\)")):
    cluster.detect(env, probes())


def test_single_process_opt_out():
  """A sweep's child run inherits the variables of the job the sweep runs in, and must not join it."""
  for env in (SLURM, OMPI4, GKE, {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}):
    assert cluster.detect({**env, "VIT_ADAPT_SINGLE_PROCESS": "1"}, probes(tpu_vm=True)) is None
    assert cluster.detect({**env, "VIT_ADAPT_SINGLE_PROCESS": "0"}, probes(tpu_vm=True)) is not None
  assert cluster.detect({"VIT_ADAPT_SINGLE_PROCESS": "1"}, probes(tpu_vm=True, gce_processes=4)) is None


def test_slurm():
  launch = cluster.detect(SLURM, probes())
  assert launch == cluster.Launch("slurm", {"cluster_detection_method": "slurm"})
  # One task per node drives all the node's GPUs (jax alone would give it only GPU 0).
  assert cluster.detect(SLURM, probes(gpus=8)).init_kwargs["local_device_ids"] == list(range(8))
  four = {**SLURM, "SLURM_NTASKS": "8", "SLURM_PROCID": "6", "SLURM_LOCALID": "2",
          "SLURM_STEP_TASKS_PER_NODE": "4(x2)"}
  assert cluster.detect(four, probes(gpus=8)).init_kwargs["local_device_ids"] == [4, 5]
  # --gpus-per-task: SLURM narrowed CUDA_VISIBLE_DEVICES to this task's GPU, which is device 0 of the process.
  narrowed = {**four, "CUDA_VISIBLE_DEVICES": "6"}
  assert cluster.detect(narrowed, probes(gpus=8)).init_kwargs["local_device_ids"] == [0]
  # Uneven nodes: "2,1(x2)" = [2, 1, 1]; node 2 runs one task.
  uneven = {**SLURM, "SLURM_NTASKS": "4", "SLURM_NODEID": "2", "SLURM_STEP_TASKS_PER_NODE": "2,1(x2)"}
  assert cluster.detect(uneven, probes(gpus=2)).init_kwargs["local_device_ids"] == [0, 1]
  # A one-task step, and a batch script outside any `srun` step, are single processes.
  assert cluster.detect({**SLURM, "SLURM_NTASKS": "1"}, probes()) is None
  assert cluster.detect({k: v for k, v in SLURM.items() if k != "SLURM_STEP_NODELIST"}, probes()) is None


def test_open_mpi():
  launch = cluster.detect(OMPI4, probes(gpus=4))
  assert launch == cluster.Launch("ompi", {"cluster_detection_method": "ompi", "local_device_ids": [2, 3]})
  assert cluster.detect({**OMPI4, "OMPI_COMM_WORLD_SIZE": "1"}, probes()) is None
  assert cluster.detect({**SLURM, **OMPI4}, probes()).kind == "ompi"  # mpirun inside an allocation: jax's order


def test_cloud_tpu():
  assert cluster.detect(GKE, probes(tpu_vm=True)) == cluster.Launch("tpu-gke", {"cluster_detection_method": "gketpu"})
  assert cluster.detect(GKE, probes(tpu_vm=False)) is None  # no TPU jax could drive (the backend check warns)
  one_host = {"TPU_WORKER_HOSTNAMES": "w-0", "TPU_WORKER_ID": "0"}
  assert cluster.detect(one_host, probes(tpu_vm=True, gce_processes=1)) is None
  two_slices = {**one_host, "MEGASCALE_NUM_SLICES": "2"}
  assert cluster.detect(two_slices, probes(tpu_vm=True)).kind == "tpu-gke"
  # A GCE pod slice: nothing in the environment, the metadata server lists the workers.
  assert cluster.detect({}, probes(tpu_vm=True, gce_processes=4)) == cluster.Launch(
      "tpu-gce", {"cluster_detection_method": "gcetpu"})
  assert cluster.detect({}, probes(tpu_vm=True, gce_processes=1)) is None  # a single-host TPU VM (v4-8, Colab)
  assert cluster.detect({"TPU_SKIP_MDS_QUERY": "1"}, probes(tpu_vm=True)) is None


@pytest.mark.parametrize("env, method, expected", [
    (SLURM, "slurm", ("node001:", 2, 1)),
    (OMPI4, "ompi", ("10.96.0.1:", 4, 3)),
    (GKE, "gketpu", ("w-0:8482", 4, 2)),
])
def test_jax_resolves_what_detect_names(env, method, expected):
  """The launcher `detect` names is one jax's cluster environments recognise in the same environment, and they
  resolve the coordinator, the process count and this process's id from it."""
  with mock.patch.dict(os.environ, env, clear=True), \
       mock.patch.object(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True), \
       mock.patch.object(cloud_tpu_cluster.BaseTpuCluster, "wait_for_coordinator", lambda *a: None), \
       mock.patch.object(cloud_tpu_cluster, "get_tpu_env_value", os.environ.get):  # no metadata server here
    launch = cluster.detect(os.environ, probes(tpu_vm=True))
    assert launch.init_kwargs["cluster_detection_method"] == method
    env_cls = next(c for c in clusters.ClusterEnv._cluster_types if c.name == method)
    assert env_cls.is_env_present()
    address, count, index, _ = clusters.ClusterEnv.auto_detect_unset_distributed_params(
        None, None, None, launch.init_kwargs.get("local_device_ids"), method, 300)
  assert address.startswith(expected[0]) and (count, index) == expected[1:]
