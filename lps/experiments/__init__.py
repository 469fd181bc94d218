"""Many runs and what they show: sweeps (`sweep`) and named suites (`suites`), reports over run
directories (`report`) and the paper's toy analyses (`toy_analysis`, Figures 2 and 3).
See docs/sweeps-and-reports.md.

Imports: `lps.deploy`, `lps.training` and everything below; never `lps.cli`.
"""
