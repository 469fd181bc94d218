"""The toy suite and the paper's analysis figures reproduce its qualitative claims."""

import numpy as np
import pytest

from lps.data import toy
from lps.data.validate import validate
from lps.experiments import toy_analysis as analysis


@pytest.mark.parametrize("name", sorted(toy.TASKS))
def test_toy_tasks_are_valid_bandits(name):
    data = validate(toy.make_dataset(f"toy-{name}", samples=500), 1, source=name)
    task = toy.TASKS[name]
    actions = data["actions"][0::2]
    assert actions.shape == (500, task.dim) and np.abs(actions).max() <= 1
    ev = toy.ToyEvaluator(f"toy-{name}")
    on_data = toy.score(task, actions, ev.reference)
    assert on_data["eval/in_support"] > 0.97  # the data is in its own support
    assert task.reward(task.best[None])[0] == pytest.approx(task.reward(actions).max(), abs=0.05)
    far = np.full((1, task.dim), 5.0)  # outside the action box: never in support
    assert toy.score(task, far, ev.reference)["eval/in_support"] == 0.0


def test_unknown_toy_task():
    with pytest.raises(ValueError, match="toy-checkerboard"):
        toy.task_of("toy-nosuch")


def test_figure2_small_alpha_leaves_support_lps_stays(tmp_path):
    numbers = analysis.figure2("four-gaussians", alphas=(0.03,), steps=2000, seed=0, out=tmp_path, samples=200)
    assert numbers["qc-fql alpha=0.03"]["eval/in_support"] < 0.5
    assert numbers["lps (untuned)"]["eval/in_support"] > 0.9
    assert (tmp_path / "figure2-four-gaussians.png").stat().st_size > 1000


def test_figure3_distilled_latent_critic_gradient_is_not_the_true_one(tmp_path):
    numbers = analysis.figure3("four-gaussians", steps=2000, seed=0, out=tmp_path, latents=200)
    assert numbers["mean_cosine_pulled_back"] == pytest.approx(1.0, abs=1e-5)
    assert numbers["mean_cosine_distilled"] < 0.9
    assert (tmp_path / "figure3-four-gaussians.png").stat().st_size > 1000
