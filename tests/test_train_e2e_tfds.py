"""End to end: `train_and_evaluate` for two steps of every baseline on mocked VTAB-1k data (tfds mock_data),
checking what a run leaves in its workdir (results, adapter-only checkpoints, the exported model)."""

import pytest
from tensorflow_datasets import testing as tfds_testing

from e2e_checks import BASELINES, check_run, vtab_config
from vit_adapt import train


@pytest.mark.parametrize("method", BASELINES)
def test_two_steps_on_mocked_vtab(method, tiny_config, fast_compile, tmp_path):
  config = vtab_config(tiny_config, method)
  with tfds_testing.mock_data(num_examples=12):
    results = train.train_and_evaluate(config, str(tmp_path))
  check_run(tmp_path, config, results, num_eval=12)


