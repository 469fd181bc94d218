"""The paper's analysis figures on the toy bandits (`lps toy figure2|figure3`); see docs/data.md
("Toy bandits and the paper's analysis figures").

Figure 2: the data's density beside the policy's samples, QC-FQL at several alphas against
untuned LPS (policy extraction vs support). Figure 3: the action critic pulled back to the latent,
`Q(s, pi_beta(s, z))`, beside DSRL's distilled `Q_W(s, z)`, and the cosine similarity of their
latent gradients (why LPS backpropagates through the policy). Each function trains through
`lps.training.loop.train`, writes PNGs and returns the numbers behind the figure.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lps.agents import config_class
from lps.data import toy
from lps.deploy.policy import load_policy
from lps.nets.critic import q_values
from lps.nets.latent import sample_latent
from lps.training.config import preset, with_flags
from lps.training.loop import train
from lps.training.runlog import pyplot


def _train_toy(agent: str, env: str, out: Path, steps: int, seed: int, **agent_kw):
    """Train `agent` on a toy task with the toy preset; return the loaded policy."""
    cfg, agent_cfg = preset("toy", config_class(agent))
    run_dir = out / "runs" / (agent + "".join(f"-{k}{v}" for k, v in agent_kw.items()))
    cfg = with_flags(
        cfg, env=env, steps=steps, seed=seed, run_dir=str(run_dir), overwrite=True, progress=False,
        eval_every=steps, save_every=steps, log_every=min(cfg.log_every, steps),
    )  # fmt: skip
    train(agent, cfg, dataclasses.replace(agent_cfg, **agent_kw))
    return load_policy(run_dir, seed)


def figure2(task: str = "four-gaussians", alphas=(0.03, 3.0, 300.0), steps: int = 3000, seed: int = 0,
            out: str | Path = "runs/toy/figure2", samples: int = 1000) -> dict[str, dict[str, float]]:  # fmt: skip
    env, out = f"toy-{task}", Path(out)
    toy_task = toy.task_of(env)
    reference = toy_task.sample(np.random.default_rng(12345), toy.REFERENCE_SAMPLES)
    obs = np.zeros((samples, 1), np.float32)
    panels = {}
    for alpha in alphas:
        policy = _train_toy("qc-fql", env, out, steps, seed, alpha=float(alpha))
        panels[f"qc-fql alpha={alpha:g}"] = policy(obs).reshape(samples, -1)
    panels["lps (untuned)"] = _train_toy("lps", env, out, steps, seed)(obs).reshape(samples, -1)
    numbers = {name: toy.score(toy_task, actions, reference) for name, actions in panels.items()}

    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(3.2 * (len(panels) + 1), 3.4))
    data = toy.make_dataset(env, seed=0)["actions"][0::2]
    axes[0].hist2d(data[:, 0], data[:, 1], bins=60, range=[[-1, 1], [-1, 1]], cmap="Blues")
    axes[0].set_title(f"{task}: dataset")
    for ax, (name, actions) in zip(axes[1:], panels.items()):
        ax.hist2d(data[:, 0], data[:, 1], bins=60, range=[[-1, 1], [-1, 1]], cmap="Greys", alpha=0.5)
        ax.scatter(actions[:, 0], actions[:, 1], s=4, c="tab:red")
        n = numbers[name]
        ax.set_title(f"{name}\nreward {n['eval/return']:.2f}, in support {n['eval/in_support']:.2f}", fontsize=9)
    for ax in axes:
        ax.plot(*toy_task.best[:2], marker="*", color="gold", markersize=12, markeredgecolor="k")
        ax.set(xlim=(-1, 1), ylim=(-1, 1), aspect="equal", xticks=[], yticks=[])
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"figure2-{task}.png", dpi=110)
    plt.close(fig)
    return numbers


def latent_gradients(policy, latents: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For a trained DSRL-NA policy: pulled-back Q and distilled Q_W at `latents`, and their gradients."""
    agent, params = policy.agent, policy.params
    obs = jnp.zeros((1, agent.spec.obs_dim))

    def pulled_back(z):
        chunk = agent.base.sample(params["base"], obs, z[None])
        return jnp.mean(q_values(agent.cfg.critic, params["critic"], obs, chunk))

    def distilled(z):
        return jnp.mean(q_values(agent.latent_critic, params["latent_critic"], obs, z[None]))

    def values_and_grads(f):
        v, g = jax.vmap(jax.value_and_grad(f))(jnp.asarray(latents, jnp.float32))
        return np.asarray(v), np.asarray(g)

    (q, dq), (qw, dqw) = values_and_grads(pulled_back), values_and_grads(distilled)
    return q, qw, dq, dqw


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


def figure3(task: str = "four-gaussians", steps: int = 3000, seed: int = 0, out: str | Path = "runs/toy/figure3",
            latents: int = 1000) -> dict[str, float]:  # fmt: skip
    env, out = f"toy-{task}", Path(out)
    policy = _train_toy("dsrl-na", env, out, steps, seed)
    dim = policy.agent.spec.chunk_dim
    # The latents the latent actor can choose: the sphere of radius sqrt(d).
    z = np.asarray(sample_latent(jax.random.PRNGKey(seed), (latents, dim), "sphere"))
    q, qw, dq, dqw = latent_gradients(policy, z)
    cos_distilled = cosine(dq, dqw)
    numbers = {
        "mean_cosine_distilled": float(np.mean(cos_distilled)),
        "mean_cosine_pulled_back": float(np.mean(cosine(dq, dq))),  # what LPS's latent actor follows
        "value_correlation": float(np.corrcoef(q, qw)[0, 1]),
    }

    plt = pyplot()
    out.mkdir(parents=True, exist_ok=True)
    if dim == 2:  # maps over a grid of latents; the sphere is the circle of radius sqrt(2)
        lim = 2.0
        g = np.linspace(-lim, lim, 41)
        grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
        gq, gqw, gdq, gdqw = latent_gradients(policy, grid)
        maps = [("Q(s, pi_beta(s, z))", gq), ("distilled Q_W(s, z)", gqw), ("cos(grad Q, grad Q_W)", cosine(gdq, gdqw))]
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
        for ax, (title, values) in zip(axes, maps):
            im = ax.imshow(values.reshape(41, 41), origin="lower", extent=(-lim, lim, -lim, lim), cmap="viridis")
            ax.add_patch(plt.Circle((0, 0), np.sqrt(2), fill=False, color="w", ls="--"))
            ax.set_title(title, fontsize=10)
            fig.colorbar(im, ax=ax, fraction=0.046)
        fig.suptitle(f"{task}: mean cosine on the sphere {numbers['mean_cosine_distilled']:.2f}")
    else:
        fig, ax = plt.subplots(figsize=(4.5, 3.4))
        ax.hist(cos_distilled, bins=40, range=(-1, 1))
        ax.set(xlabel="cos(grad Q, grad Q_W) on the sphere", ylabel="latents", title=task)
    fig.tight_layout()
    fig.savefig(out / f"figure3-{task}.png", dpi=110)
    plt.close(fig)
    return numbers
