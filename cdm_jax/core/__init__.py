"""The math of continuous diffusion LMs as pure JAX functions: schedules, what the denoiser's
output means, forward noising and losses, the likelihood bound, reverse samplers and decoders,
conditions as known positions, guidance shifts. Nothing here reads files, parses flags or builds a model; it
imports only `cdm_jax.runtime.registry` and itself."""
