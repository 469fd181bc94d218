"""Playing episodes in a pool of environments with open-loop action chunks: the stepping shared by
evaluation (`lps.training.evaluate`) and the online phase (`lps.training.online`).

A round is one batched policy call for every slot (`act`), then each running episode's chunk
executed open loop where its environment lives (`step`). Episode i of a seed is reset with a seed
derived from (seed, i) and its c-th chunk drawn with a key derived from (seed, i, c), so episodes
do not depend on the pool's size or on which slot plays them.
"""

from __future__ import annotations

import numpy as np

from lps.data.frames import Frames

Slot = tuple[int, int]  # (group, index in the group): a group per evaluated seed; the online phase has one


def episode_seed(seed: int, episode: int) -> int:
    """The environment reset seed of episode `episode` of seed `seed`."""
    return int(np.random.SeedSequence([seed, episode]).generate_state(1)[0])


class EpisodePool:
    """The slots of `envs` (`lps.training.envs`: `LocalEnvs` or `EnvWorkerPool`) as `groups` groups of
    `per_group`, each slot playing one episode at a time. The arrays a policy is called with live
    here: `obs` (with `--frame-stack K`, each episode's last K frames), `episode` (the episode a slot
    plays or played last; -1 once released) and `chunk` (chunks drawn so far in it)."""

    def __init__(self, envs, groups: int, per_group: int, frame_stack: int = 1):
        self.envs, self.per_group, self.frame_stack = envs, per_group, frame_stack
        *hw, channels = envs.obs_shape
        policy_obs_shape = (*hw, channels * frame_stack) if frame_stack > 1 else tuple(envs.obs_shape)
        self.episode = np.full((groups, per_group), -1)
        self.chunk = np.zeros((groups, per_group), np.int64)
        self.running = np.zeros((groups, per_group), bool)
        # Slots not running keep their last observation (their chunks are drawn and dropped).
        self.obs = np.zeros((groups, per_group, *policy_obs_shape), envs.obs_dtype)
        self._frames: dict[Slot, Frames] = {}

    def env_slot(self, slot: Slot) -> int:
        return slot[0] * self.per_group + slot[1]

    def slot_of(self, env_slot: int) -> Slot:
        return divmod(env_slot, self.per_group)

    def start(self, episodes: dict[Slot, tuple[int, int]]) -> dict[Slot, np.ndarray]:
        """Reset slots to play new episodes, `{slot: (episode index, reset seed)}`; their first
        observations. The slots are marked first, so a failed reset names the episodes it started."""
        for slot, (index, _) in episodes.items():
            self.episode[slot], self.chunk[slot], self.running[slot] = index, 0, True
        resets = self.envs.reset({self.env_slot(slot): seed for slot, (_, seed) in episodes.items()})
        first = {}
        for env_slot, ob in resets.items():
            slot = self.slot_of(env_slot)
            self._frames[slot] = Frames(self.frame_stack, ob)
            self.obs[slot] = self._frames[slot].stacked()
            first[slot] = ob
        return first

    def release(self, slot: Slot) -> None:
        """The slot plays no more episodes (its chunks are still drawn, for episode 0, and dropped)."""
        self.episode[slot], self.running[slot] = -1, False

    def act(self, policy) -> np.ndarray:
        """One chunk per slot, (groups, per_group, H, A), in one call of a `SeedsPolicy`."""
        return np.asarray(policy(self.obs, np.maximum(self.episode, 0), self.chunk))

    def step(self, chunks: np.ndarray):
        """Execute each running episode's chunk open loop (stopping where its episode ends) and
        record its frames; `{slot: ChunkOutcome}` of the running slots, in slot order."""
        running = [(int(j), int(b)) for j, b in zip(*np.nonzero(self.running))]
        outcomes = self.envs.step_chunks({self.env_slot(slot): chunks[slot] for slot in running})
        stepped = {}
        for slot in running:
            out = stepped[slot] = outcomes[self.env_slot(slot)]
            # every executed step's frame, as in training (code that records none gives the last)
            self._frames[slot].extend(out.observations if out.observations is not None else [out.obs])
            self.obs[slot] = self._frames[slot].stacked()
            self.chunk[slot] += 1
            self.running[slot] = not out.done
        return stepped
