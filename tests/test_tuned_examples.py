"""Every tuned example parses into a valid AlgorithmConfig (keys, algorithm, env and env_config checked);
examples whose optional env is not installed are skipped with the install command."""

import glob
import os

import pytest

from marlx.cli.experiment import load_experiment_file, parse_experiments
from marlx.errors import MissingDependencyError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = sorted(glob.glob(os.path.join(ROOT, "tuned_examples", "*", "*.yaml")))


def test_there_are_tuned_examples():
    assert len(FILES) >= 6


@pytest.mark.parametrize("path", FILES, ids=[os.path.relpath(f, ROOT) for f in FILES])
def test_tuned_example_is_valid(path):
    text = open(path).read()
    assert text.lstrip().startswith("#"), "each tuned example starts with a comment stating its result and budget"
    try:
        experiments = parse_experiments(load_experiment_file(path), source=path)
    except MissingDependencyError as e:
        pytest.skip(str(e))
    for exp in experiments:
        exp.config.validate()
        assert exp.stop, "a tuned example states its budget in stop:"
        folder = os.path.basename(os.path.dirname(path))
        assert exp.algo_name.lower() == folder, f"{path} runs {exp.algo_name}, not the algorithm of its folder"
