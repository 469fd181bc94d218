"""What a run is built from, given its plan (`lps.training.plan`) and config: the dataset, the
agent and the evaluator; see docs/training.md.

Each is one call, so the loop (`lps.training.loop`), the policy loader (`lps.deploy.policy`) and
the benchmarks build them the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lps.agents import Spec, resolve_config
from lps.agents.encoded import build_agent, spec_fields
from lps.data import tasks, toy
from lps.data.render import check_image_size, is_visual, require_renderer
from lps.data.robot import load_for_training
from lps.data.validate import load_own_dataset, validate
from lps.host import available_cores
from lps.training.config import EvalConfig, TrainConfig
from lps.training.evaluate import DEFAULT_POOL, Evaluator, make_seeds_policy
from lps.training.plan import RunPlan


def load_data(plan: RunPlan, cfg: TrainConfig, run_dirs: list[Path] = (), stats: dict | None = None) -> dict[str, np.ndarray]:
    """The row-layout training dataset of the plan, validated. A robot folder is normalised
    (`--normalize`) with statistics fitted on it, which are stored in each of `run_dirs` for
    `lps.load_policy` to apply; or with a trained run's `stats` (its learner)."""
    if plan.kind == "robot":
        return load_for_training(plan.dataset, cfg.robot, cfg.chunk_len, cfg.progress, list(run_dirs), stats)
    if plan.kind == "npz":
        return load_own_dataset(plan.dataset, cfg.chunk_len)
    if plan.kind == "toy":
        return validate(toy.make_dataset(plan.env_id, seed=cfg.data_seed), cfg.chunk_len, source=plan.env_id)
    return tasks.load_task(plan.task, plan.data_dir, cfg.chunk_len, episodes_if_missing=cfg.episodes, seed=cfg.data_seed)


def make_evaluator(plan: RunPlan, eval_cfg: EvalConfig, frame_stack: int = 1, num_seeds: int = 1):
    """An evaluator for the plan's environment and `num_seeds` seeds, or None (no evaluation asked,
    or no environment)."""
    if eval_cfg.episodes == 0 or plan.env_id is None:
        return None
    if plan.toy_env:
        return toy.ToyEvaluator(plan.env_id)
    if is_visual(plan.env_id):
        require_renderer(plan.env_id)  # a clear error naming what to install, before any env is made
    try:
        return Evaluator(plan.env_id, min(eval_cfg.episodes, DEFAULT_POOL), num_seeds, eval_cfg.workers,
                         frame_stack=frame_stack, chunk_timeout=eval_cfg.chunk_timeout)  # fmt: skip
    except ImportError as e:
        print(f"[lps] evaluation disabled: {e}")
        return None


def check_fits_env(evaluator, spec: Spec, env: str, fix: str) -> None:
    """Refuse (closing `evaluator`) a policy whose observations are not the environment's: acting on
    them would fail only at the first evaluation, after the training. `fix` says what to do."""
    try:
        check_image_size(spec.image_shape, getattr(evaluator, "obs_shape", None), env)
        env_dim = getattr(evaluator, "obs_dim", None)
        if env_dim is not None and env_dim != spec.obs_dim:
            raise ValueError(
                f"{env} observations have {env_dim} dims but the data's (the policy's) have {spec.obs_dim}: "
                f"evaluating in {env} cannot work; {fix}"
            )
    except ValueError:
        evaluator.close()
        raise


def overlap_evaluation(eval_cfg: EvalConfig) -> bool:
    """--eval-async: auto overlaps only with >= 4 cores (on fewer the evaluation competes with
    training for the same cores, and evaluating in between is faster)."""
    return eval_cfg.overlap == "true" or (eval_cfg.overlap == "auto" and available_cores() >= 4)


def make_policy_fn(agent, params, seed: int):
    """The evaluators' policy for one seed's parameters (no seed axis); see lps.training.evaluate."""
    return make_seeds_policy(agent, params, [seed], seed_axis=False)


def build(agent_name: str, cfg: TrainConfig, agent_cfg, data: dict[str, np.ndarray], defaults_task: str):
    """The agent for the dataset's observations and actions; `defaults_task`: `RunPlan.defaults_task`."""
    fields = spec_fields(data["observations"])
    spec = Spec(action_dim=data["actions"].shape[1], chunk_len=cfg.chunk_len, gamma=cfg.gamma,
                frame_stack=cfg.frame_stack, **fields)  # fmt: skip
    if cfg.frame_stack > 1 and not spec.has_images:
        raise ValueError(f"--frame-stack {cfg.frame_stack} stacks camera frames, but this data's observations are "
                         "state vectors: leave --frame-stack at 1")  # fmt: skip
    return build_agent_for(agent_name, cfg, resolve_config(agent_name, agent_cfg, defaults_task), spec)


def build_agent_for(agent_name: str, cfg: TrainConfig, agent_cfg, spec: Spec):
    """The agent for a spec, with the config's image encoder when observations hold images."""
    return build_agent(agent_name, agent_cfg, spec, cfg.encoder, cfg.encoder_features, cfg.augment_shift,
                       cfg.augment_prob, cfg.shared_encoder)  # fmt: skip
