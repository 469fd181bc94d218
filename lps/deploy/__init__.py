"""Using a trained policy: loading it (`policy`), the policy server (`serve`), the replay check
(`replay_check`) and offline evaluation on recorded episodes (`offline_eval`). The robot-side
client is the standalone file `lps/client.py`. See docs/serving.md.

Imports: `lps.training` and everything below it; never `lps.experiments` or `lps.cli`.
"""
