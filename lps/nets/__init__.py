"""Model blocks: MLPs and ensembles, the chunked critic, flows (flow matching, MeanFlow), latent
geometry, the generative base policy, the DiT, the IMPALA image encoders and random-shift
augmentation.
See docs/method.md; the image encoders: docs/data.md ("Image encoders").

Pure Flax modules and functions of arrays. Imports: jax/flax/numpy and `lps.nets` only.
"""
