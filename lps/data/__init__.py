"""Data: task names and rewards (`tasks`), OGBench play-data generation (`generate`), robot episode
folders (`robot`) and tiny synthetic ones to try them (`synthetic`), the toy bandits (`toy`),
offscreen rendering (`render`), validation (`validate`), the on-device chunk sampler (`sampler`)
and the online replay buffer (`replay`). See docs/data.md and docs/robot-data.md.

Imports: numpy/jax, the optional environment packages and the base modules (`lps.files`,
`lps.host`); never `lps.agents`, `lps.training` or anything above.
"""
