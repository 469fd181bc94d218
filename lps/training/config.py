"""The training config, presets, and (de)serialisation of configs in run directories; see
docs/training.md.

Defaults are the paper's protocol (docs/method.md). Presets change a few fields of the
training config and, where the agent has them, its network sizes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import operator
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import tyro

from lps.agents import Spec, config_class
from lps.agents.encoded import EncoderName
from lps.data.robot import RobotDataConfig
from lps.data.tasks import RewardMode
from lps.files import user_path, write_json
from lps.training.distributed import DistributedConfig
from lps.training.evaluate import MAX_EVAL_EPISODES

MAX_UTD = 1000  # gradient updates per online environment step
MAX_FRAME_STACK = 16  # frames per image observation (--frame-stack)
MAX_ONLINE_ENVS = 256  # environments played side by side online
MAX_STEPS = 2**31 - 1  # any step count or interval: the step counters (train state, online env steps) are int32
MAX_SEED = 2**32 - 1  # JAX keys and the evaluation's seed array hold unsigned 32-bit seeds
CONFIG_JSON = "config.json"  # <run>/config.json: agent, train and agent configs, observation spec


def flag(name: str):
    """A nested config's field that keeps its flat flag (`OnlineConfig.steps` is --online-steps)."""
    return tyro.conf.arg(name=name)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation during training (checked with the rest of TrainConfig)."""

    every: Annotated[int, flag("eval_every")] = 100_000
    """Evaluate every N steps (and at the end); 0 evaluates only at the end."""
    episodes: Annotated[int, flag("eval_episodes")] = 50
    """Episodes per evaluation; 0 disables evaluation."""
    workers: Annotated[int | None, flag("eval_workers")] = None
    """Environment worker processes for evaluation (default: one per core, capped by memory at
    ~150 MB per environment); 0 steps the environments in the training process."""
    chunk_timeout: Annotated[float, flag("eval_chunk_timeout")] = 60.0
    """Seconds an env worker process may take to reset or to execute one action chunk before it is
    treated as dead (stopped or hung): it is killed and the evaluation is marked failed, naming its
    episodes, and training goes on. Chunks take milliseconds; no deadline with --eval-workers 0."""
    overlap: Annotated[Literal["auto", "true", "false"], flag("eval_async")] = "auto"
    """Evaluate a snapshot of the parameters on the host CPU while training goes on; auto: only
    with >= 4 cores (on fewer, evaluating in between is faster)."""


@dataclasses.dataclass(frozen=True)
class OnlineConfig:
    """The online phase of offline-to-online fine-tuning (checked with the rest of TrainConfig)."""

    steps: Annotated[int, flag("online_steps")] = 0
    """Online fine-tuning: environment steps in the live environment after the offline --steps
    (0: offline only). See docs/offline-to-online.md."""
    envs: Annotated[int, flag("online_envs")] = 4
    """Environments played side by side online (episodes start together in waves)."""
    workers: Annotated[int | None, flag("online_workers")] = None
    """Worker processes for the online environments (default: one per core, at most one per
    environment); 0 steps them in the training process."""
    utd: Annotated[int, flag("utd")] = 1
    """Online: gradient updates per environment step (update-to-data ratio)."""
    sync: Annotated[bool, flag("online_sync")] = False
    """Online: strict alternation (act, step the envs, then run the updates owed), step for step as
    the protocol reads. Off (default): overlap, the updates owed for one round of chunks run on the
    device while the envs step the next round, which is acted with the parameters from before
    those updates (one round of staleness, K*H env steps)."""
    mix: Annotated[Literal["buffer", "balanced"], flag("online_mix")] = "buffer"
    """Online batches: buffer = uniform over offline and online chunks (Q-chunking's single
    buffer); balanced = half offline, half online (the paper's robot recipe)."""
    start_steps: Annotated[int | None, flag("online_start_steps")] = None
    """Online: environment steps played before the first online update (Q-chunking's
    `start_training`). Default: 5,000 on OGBench tasks, as Q-chunking runs offline-to-online; 0 on
    the toy bandits."""
    lr_schedule: Annotated[Literal["restart", "continue"], flag("online_lr_schedule")] = "restart"
    """Online, under --lr-schedule cosine: restart = the online updates run at a constant --lr (the
    schedule's peak; Adam's moments go on); continue = the offline schedule's end value, lr / 10,
    as the schedule holds it past --steps. A constant schedule is the same either way."""

    # Runs recorded before these fields existed resume as they trained (see upgrade_record).
    LEGACY_DEFAULTS: ClassVar[dict] = {"start_steps": 0, "lr_schedule": "continue"}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    env: str = "cube-single-play-singletask-task1-v0"
    """Task: an OGBench `<env>-play[-sparse]-singletask-task<N>-v0` name, or a toy bandit (`toy-bandit`,
    `toy-checkerboard`, `toy-two-moons`, `toy-rings`, `toy-spiral`, `toy-mixture-50d`)."""
    seed: int = 0
    seeds: tuple[int, ...] = ()
    """Train these seeds together, vmapped in one program (e.g. --seeds 0 1 2); overrides --seed."""
    steps: int = 1_000_000
    """Gradient steps."""
    batch_size: int = 256
    lr: float = 3e-4
    """Adam learning rate (one optimiser for all networks)."""
    chunk_len: int = 5
    """Action chunk length H."""
    gamma: float = 0.99
    reward: RewardMode = "paper"
    """paper: sparse on scene and puzzle-3x3 as in the LPS paper; or force dense / sparse."""
    dataset: str | None = None
    """Train on this npz (row layout, see docs/data.md) or folder of robot episodes (HDF5, success/ and failure/)
    instead of OGBench play data."""
    val_dataset: str | None = None
    """Validation npz in the same row layout, scored at every evaluation (docs/outputs.md, "Validation split");
    OGBench tasks use the -val file beside their play data without it."""
    data_dir: str | None = None
    """Where OGBench play data lives or is generated (default $OGBENCH_DATA_DIR or ~/.ogbench/data)."""
    episodes: int = 1000
    """Episodes to generate when the play data is missing (the official size is 1000)."""
    data_seed: int = 0
    """Seed of the data generator when the play data is missing."""
    log_every: int = 1000
    """Updates per device dispatch (one lax.scan) and per metrics row."""
    save_every: int = 100_000
    """Checkpoint every N steps (and at the end)."""
    run_dir: str | None = None
    """Output directory (default runs/<env>/<agent>/seed<seed>)."""
    overwrite: bool = False
    """Allow writing into a run directory that already holds a run."""
    tensorboard: bool = False
    wandb: bool = False
    """Also log the metrics rows and the config to Weights & Biases (pip install "lps[wandb]")."""
    wandb_project: str = "lps"
    wandb_group: str | None = None
    wandb_name: str | None = None
    """Run name (default: <env>/<agent>/seed<k>)."""
    wandb_mode: Literal["online", "offline", "disabled"] = "online"
    progress: bool = True
    """Show a progress bar."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """Learning rate: constant, or 1 % linear warmup then cosine decay to --lr / 10 at --steps (paper, real robot)."""
    grad_clip: float = 0.0
    """Clip the gradient to this global norm (over all networks) before Adam; 0: off. The paper's
    real-robot recipe clips at 1.0 (the `robot` preset); its OGBench runs do not clip."""
    encoder: EncoderName = "auto"
    """Image encoder: auto = none for state vectors, impala for robot data, impala-small for pixels."""
    encoder_features: int = 512
    """Width of each image encoder's output features (per camera on robot data)."""
    augment_shift: int = 3
    """Random-shift augmentation of images during training: pad by this many pixels (edge values),
    crop back at one offset per sample shared by its observation and next observation (0: off)."""
    augment_prob: float | None = None
    """Probability that a batch's images are shifted; default 0.5 (the release's p_aug, pixels and robot)."""
    shared_encoder: bool = False
    """Ours, not the paper's: one image encoder for every network, trained by every loss. Default:
    one encoder per network plus a Polyak-averaged target encoder, as the release."""
    frame_stack: int = 1
    """Image observations: the networks see the last K frames, stacked on the channel axis (FQL's
    visual setting uses 3; the LPS release 1). Stacked in the sampler, in evaluation, online and by
    `lps.load_policy`/`lps serve` (which keep each episode's last K frames)."""
    robot: Annotated[RobotDataConfig, tyro.conf.OmitArgPrefixes] = RobotDataConfig()
    """How a --dataset folder of robot episodes is read."""
    eval: Annotated[EvalConfig, tyro.conf.OmitArgPrefixes] = EvalConfig()
    """When and how the policy is evaluated: --eval-every, --eval-episodes, --eval-workers,
    --eval-chunk-timeout, --eval-async."""
    online: Annotated[OnlineConfig, tyro.conf.OmitArgPrefixes] = OnlineConfig()
    """Online fine-tuning after the offline steps: --online-steps and the --online-* flags, --utd
    (docs/offline-to-online.md)."""
    distributed: Annotated[DistributedConfig, tyro.conf.OmitArgPrefixes] = DistributedConfig()
    """Several devices and hosts: --devices, --device-axis, --shard-params, --data-placement and the
    multi-host flags (docs/scaling.md)."""

    def __post_init__(self):
        check_counts(self)
        self._check_numbers()
        self._check_seeds_and_paths()
        # `~` is expanded once, here, so every later use sees the same path; the data's paths are
        # made absolute so that the recorded config resumes from any working directory.
        object.__setattr__(self, "run_dir", user_path(self.run_dir))
        object.__setattr__(self, "dataset", user_path(self.dataset, absolute=True))
        object.__setattr__(self, "data_dir", user_path(self.data_dir, absolute=True))

    def _check_numbers(self) -> None:
        v = flat(self)  # by flag name: the checks read as the flags do
        positive = ("steps", "batch_size", "chunk_len", "log_every", "episodes", "encoder_features", "frame_stack",
                    "online_envs", "utd")  # fmt: skip
        for name in positive:
            if v[name] <= 0:
                raise ValueError(f"--{_flag(name)} must be positive, got {v[name]}")
        for name in ("eval_every", "save_every", "eval_episodes", "augment_shift", "online_steps"):
            if v[name] < 0:
                raise ValueError(f"--{_flag(name)} must be >= 0, got {v[name]}")
        for name in ("eval_every", "save_every"):
            if v[name] % self.log_every:
                raise ValueError(
                    f"--{_flag(name)} ({v[name]}) must be a multiple of --log-every ({self.log_every}): "
                    "evaluation and checkpoints happen between device dispatches"
                )
        if self.online.start_steps is not None and self.online.start_steps < 0:
            raise ValueError(f"--online-start-steps must be >= 0, got {self.online.start_steps}")
        if self.frame_stack > MAX_FRAME_STACK:
            raise ValueError(f"--frame-stack {self.frame_stack} is above {MAX_FRAME_STACK}: every image would reach "
                             "the networks with that many frames (FQL's visual setting stacks 3)")  # fmt: skip
        if self.online.utd > MAX_UTD:
            raise ValueError(f"--utd {self.online.utd} is above {MAX_UTD}: every environment step would wait for that "
                             "many gradient steps (published recipes use 1 to 20)")  # fmt: skip
        if self.online.envs > MAX_ONLINE_ENVS:
            raise ValueError(f"--online-envs {self.online.envs} is above {MAX_ONLINE_ENVS}: each environment holds "
                             "~150 MB and a worker slot, and its episodes start in one wave")  # fmt: skip
        for name in ("online_workers", "eval_workers"):
            if v[name] is not None and v[name] < 0:
                raise ValueError(f"--{_flag(name)} must be >= 0 (0: in the training process), got {v[name]}")
        if not 0 < self.eval.chunk_timeout < float("inf"):
            raise ValueError(f"--eval-chunk-timeout must be a positive number of seconds, got {self.eval.chunk_timeout}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds must be distinct, got {self.seeds}")
        if self.augment_prob is not None and not 0 <= self.augment_prob <= 1:
            raise ValueError(f"--augment-prob must be in [0, 1], got {self.augment_prob}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if not 0 <= self.grad_clip < float("inf"):
            raise ValueError(f"--grad-clip must be a finite norm >= 0 (0: no clipping), got {self.grad_clip}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"--gamma must be in (0, 1], got {self.gamma}")

    def _check_seeds_and_paths(self) -> None:
        for name, values in (("seed", (self.seed,)), ("seeds", self.seeds), ("data_seed", (self.data_seed,))):
            value = getattr(self, name)
            if any(v < 0 for v in values):
                raise ValueError(f"--{_flag(name)} must be >= 0 (JAX and NumPy seeds are unsigned), got {value}")
            if any(v > MAX_SEED for v in values):
                raise ValueError(f"--{_flag(name)} {value} is above {MAX_SEED} (2**32 - 1): seeds are unsigned "
                                 "32-bit integers, a larger one would wrap around onto another seed")  # fmt: skip
        if self.run_dir == "" or self.dataset == "" or self.data_dir == "":
            empty = next(n for n in ("run_dir", "dataset", "data_dir") if getattr(self, n) == "")
            raise ValueError(f"--{_flag(empty)} is empty; give a path or leave the flag out")


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The paper's protocol: 1M steps, 50 evaluation episodes every 100k, paper network sizes.
    "paper": {"train": {}, "agent": {}},
    # Shows learning on a 2-core CPU in about 15 minutes: 100 episodes of data, 2x256 networks
    # (every `*_hidden` field of the agent).
    "quick": {
        "train": dict(steps=50_000, eval_every=10_000, save_every=10_000, episodes=100),
        "agent": dict(hidden=(256, 256)),
    },
    # The one-step toy bandit of `lps.data.toy`: learning checks in seconds.
    "toy": {
        "train": dict(
            env="toy-bandit",
            chunk_len=1,
            steps=2000,
            eval_every=1000,
            save_every=1000,
            log_every=250,
            eval_episodes=1000,
        ),
        "agent": dict(hidden=(128, 128), actor_hidden=(64, 64)),
    },
}
PRESETS["cpu"] = PRESETS["quick"]
# The paper's real-robot recipe (public code's DROID script): 10k steps, IMPALA encoder, DiT-S
# base policy (384 wide, 12 deep, 6 heads), cosine schedule, critic 4x512, latent actor 2x512.
# Use with `--dataset DIR` (a folder of robot episodes); there is no environment to evaluate in.
# As the script runs it: p_aug 0.5, one IMPALA per camera (the encoder's rule for {state, image}),
# images at their recorded size, successful demonstrations only (`--include-failure` opts in).
PRESETS["robot"] = {
    "train": dict(steps=10_000, log_every=100, eval_every=0, save_every=5000, eval_episodes=0,
                  lr_schedule="cosine", grad_clip=1.0, encoder="impala", augment_prob=0.5,
                  robot=RobotDataConfig(include_failure=False, image_size=0)),  # fmt: skip
    "agent": dict(base_arch="mfdit", dit_width=384, dit_depth=12, dit_heads=6, critic_hidden=(512,) * 4,
                  actor_hidden=(512, 512)),  # fmt: skip
}
# Pixel tasks on a CPU, a smoke-scale run: every frame is rendered in software (~8 frames/s per
# idle core, see bench/render.py) and an update with the image encoder takes ~0.5 s at batch 64,
# so 10 episodes of data (11k frames) instead of 100, 2000 steps, 10 evaluation episodes.
PRESETS["quick-pixels"] = {
    "train": dict(steps=2_000, eval_every=1_000, save_every=1_000, episodes=10, eval_episodes=10, batch_size=64),
    "agent": dict(hidden=(256, 256)),
}
PRESETS["cpu-pixels"] = PRESETS["quick-pixels"]


def _flag(name: str) -> str:
    return name.replace("_", "-")


# --- the config by flag name ----------------------------------------------------------------
# `eval` and `online` are nested configs whose fields keep their flat flags (--eval-every is
# `cfg.eval.every`); these read and set a TrainConfig by flag name, as presets, sweeps, resume
# checks and old config.json files name its fields.

GROUPS = ("eval", "online")


@functools.cache  # read on every TrainConfig built (its checks name fields by flag)
def group_flags(cls: type) -> dict[str, str]:
    """A nested config's field -> its flag name (underscored), from its `flag(...)` annotations."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: next(m.name for m in getattr(hints[f.name], "__metadata__", ()) if getattr(m, "name", None))
            for f in dataclasses.fields(cls)}  # fmt: skip


def flat(cfg: TrainConfig) -> dict[str, Any]:
    """Every field of `cfg` by flag name; the `eval` and `online` groups opened."""
    out = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in GROUPS}
    for group in GROUPS:
        sub = getattr(cfg, group)
        out.update({name: getattr(sub, field) for field, name in group_flags(type(sub)).items()})
    return out


def with_flags(cfg: TrainConfig, **values) -> TrainConfig:
    """`cfg` with fields replaced by flag name (`with_flags(cfg, online_steps=100, steps=10)`)."""
    groups = {g: {} for g in GROUPS}
    for group in GROUPS:
        for field, name in group_flags(type(getattr(cfg, group))).items():
            if name in values:
                groups[group][field] = values.pop(name)
    nested = {g: dataclasses.replace(getattr(cfg, g), **kw) for g, kw in groups.items() if kw}
    return dataclasses.replace(cfg, **values, **nested)


def flag_types() -> dict[str, Any]:
    """Flag name -> type of every TrainConfig field (the groups opened), as `lps sweep` checks grids."""
    hints = typing.get_type_hints(TrainConfig)
    out = {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig) if f.name not in GROUPS}
    for group in GROUPS:
        cls = hints[group]
        sub = typing.get_type_hints(cls)
        out.update({name: sub[field] for field, name in group_flags(cls).items()})
    return out


def upgrade_record(train: dict) -> dict:
    """A recorded `train` config in today's shape: runs recorded before the groups existed hold
    their fields flat (`"online_steps": 0`), and lack the fields added since (LEGACY_DEFAULTS)."""
    train = dict(train)
    for group, cls in (("eval", EvalConfig), ("online", OnlineConfig)):
        if group in train:
            continue
        sub = {}  # fields it lacks take LEGACY_DEFAULTS (from_dict)
        for field, name in group_flags(cls).items():
            if name in train:
                sub[field] = train.pop(name)
        train[group] = sub
    return train


# Counts of steps (and of what steps are counted in): whole numbers up to MAX_STEPS.
COUNT_FIELDS = ("steps", "online_steps", "online_start_steps", "eval_every", "save_every", "log_every", "episodes",
                "eval_episodes", "batch_size", "chunk_len", "encoder_features", "augment_shift", "frame_stack",
                "online_envs", "utd", "seed", "data_seed", "eval_workers", "online_workers")  # fmt: skip


def check_counts(cfg: TrainConfig) -> None:
    """Every count of the config is a whole number (not 1e6, not True) and no step count is beyond
    what the int32 step counters hold; a run's total gradient steps (offline, then --utd per online
    env step) neither. Checked first, so the other rules compare integers."""
    v = flat(cfg)
    for name in COUNT_FIELDS:
        value = v[name]
        if value is None:
            continue
        try:
            if isinstance(value, bool):
                raise TypeError
            operator.index(value)
        except TypeError:
            raise ValueError(f"--{_flag(name)} must be a whole number, got {value!r}") from None
    for s in cfg.seeds:
        if isinstance(s, bool) or not hasattr(type(s), "__index__"):
            raise ValueError(f"--seeds must be whole numbers, got {cfg.seeds!r}")
    for name in ("steps", "online_steps", "online_start_steps", "eval_every", "save_every", "log_every", "episodes",
                 "batch_size"):  # fmt: skip
        value = v[name]
        if value is not None and value > MAX_STEPS:
            raise ValueError(f"--{_flag(name)} {value} is above {MAX_STEPS} (2**31 - 1): step counters are 32-bit "
                             "integers")  # fmt: skip
    if cfg.eval.episodes > MAX_EVAL_EPISODES:
        raise ValueError(f"--eval-episodes {cfg.eval.episodes} is above {MAX_EVAL_EPISODES}: every episode's result is "
                         "kept in memory; the paper evaluates 50")  # fmt: skip
    steps, online = cfg.steps, cfg.online
    if steps > 0 and online.steps > 0 and online.utd > 0 and steps + online.steps * online.utd > MAX_STEPS:
        raise ValueError(
            f"--steps {steps} + --online-steps {online.steps} x --utd {online.utd} gradient steps is above "
            f"{MAX_STEPS} (2**31 - 1): the train state's step counter is a 32-bit integer"
        )


def preset(name: str, agent_config_cls: type) -> tuple[TrainConfig, Any]:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    p = PRESETS[name]
    return with_flags(TrainConfig(), **p["train"]), agent_config_cls(**agent_overrides(p["agent"], agent_config_cls))


def agent_overrides(overrides: dict, agent_config_cls: type) -> dict:
    """`hidden` sets every `*_hidden` field; other keys apply where the agent has that field."""
    out = {}
    for f in dataclasses.fields(agent_config_cls):
        if f.name in overrides:
            out[f.name] = overrides[f.name]
        elif f.name.endswith("_hidden") and "hidden" in overrides:
            out[f.name] = overrides["hidden"]
    return out


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict):
    """Rebuild a config dataclass from JSON (lists back to tuples; unknown keys are an error). A
    field missing from an older run's JSON takes the class's `LEGACY_DEFAULTS` value when it has
    one (what such runs did before the field existed), else the field's default."""
    data = {**getattr(cls, "LEGACY_DEFAULTS", {}), **data}
    if cls is TrainConfig:
        data = upgrade_record(data)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"config for {cls.__name__} has unknown field(s) {sorted(unknown)}")
    kwargs = {}
    for k, v in data.items():
        origin = typing.get_origin(hints[k])
        if dataclasses.is_dataclass(hints[k]) and isinstance(v, dict):
            kwargs[k] = from_dict(hints[k], v)
        elif typing.get_origin(hints[k]) is typing.Annotated and dataclasses.is_dataclass(typing.get_args(hints[k])[0]):
            kwargs[k] = from_dict(typing.get_args(hints[k])[0], v)
        else:
            kwargs[k] = tuple(v) if origin is tuple and isinstance(v, list) else v
    return cls(**kwargs)


def check_positive_widths(cfg) -> None:
    """Network widths and counts of an agent config must be positive."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name.endswith("_hidden") and (not value or any(w <= 0 for w in value)):
            raise ValueError(f"--{_flag(f.name)} needs at least one positive width, got {value}")
        if f.name.startswith("num_") and value <= 0:
            raise ValueError(f"--{_flag(f.name)} must be positive, got {value}")


def check_agent_config(cfg) -> None:
    """An agent config's values must have a meaning: positive widths and counts, a non-negative
    behaviour weight `alpha`, a Polyak rate `tau` in (0, 1]."""
    check_positive_widths(cfg)
    alpha = getattr(cfg, "alpha", None)
    if alpha is not None and not alpha >= 0:
        raise ValueError(f"--alpha must be >= 0 (it weights a loss), got {alpha}")
    tau = getattr(cfg, "tau", None)
    if tau is not None and not 0 < tau <= 1:
        raise ValueError(f"--tau must be in (0, 1] (the target network's Polyak rate), got {tau}")


# --- a run's config.json and what it tells ----------------------------------------------------


def save_config(run_dir: Path, agent_name: str, cfg: TrainConfig, agent_cfg, spec: Spec | None = None) -> None:
    record = {"agent": agent_name, "train": to_dict(cfg), "agent_config": to_dict(agent_cfg)}
    if spec is not None:
        record["spec"] = dataclasses.asdict(spec)
    write_json(run_dir / CONFIG_JSON, record)


def load_config(run_dir: str | Path) -> tuple[str, TrainConfig, Any, Spec | None]:
    path = Path(run_dir) / CONFIG_JSON
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {CONFIG_JSON})")
    try:
        record = json.loads(path.read_text())
        agent_name = record["agent"]
        spec = Spec(**record["spec"]) if "spec" in record else None
        # Where a run trained (devices, hosts) says nothing about where it resumes or is loaded: a
        # recorded coordinator or device count would tie it to that machine. Resumes take the flags given.
        train = from_dict(TrainConfig, record["train"])
        train = dataclasses.replace(train, distributed=DistributedConfig())
        return (
            agent_name,
            train,
            from_dict(config_class(agent_name), record["agent_config"]),
            spec,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # UnicodeDecodeError, JSONDecodeError too
        what = f"missing key {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise ValueError(
            f"{path} is damaged or not a run's config ({what}); restore it from a copy, or start the run afresh "
            "with --overwrite"
        ) from None
