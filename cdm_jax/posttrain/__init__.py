"""Stages that start from a trained workdir: progressive distillation into few-step students, the
contextual read-out decoder, and noisy-latent classifiers for guidance. Each writes an artifact
beside the model that `cdm_jax.sampling` reads (`sampling/artifacts.py` owns the formats)."""
