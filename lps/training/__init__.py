"""Training: the train state and the update (`update`), what a run is built from (`setup`), the
offline loop (`loop`), the online phase (`online`), evaluation and its schedule (`evaluate`,
`eval_schedule`), the environment pool (`envs`), validation metrics (`validation`), the run
directory (`rundir`), checkpoints (`checkpoint`), logs (`runlog`, `loggers`) and the typed config
(`config`). See docs/training.md.

Imports: `lps.agents`, `lps.nets`, `lps.data` and the base modules (`lps.files`, `lps.host`);
never `lps.deploy`, `lps.experiments` or `lps.cli`.
"""
