"""Model blocks: MLPs and ensembles, the chunked critic, flows (flow matching, MeanFlow), latent
geometry, the generative base policy and the DiT.
See docs/method.md.

Pure Flax modules and functions of arrays. Imports: jax/flax/numpy and `lps.nets` only.
"""
