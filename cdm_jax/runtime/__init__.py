"""What every job needs around the math: name registries, paths (local or gs://) with atomic writes,
the device mesh and shardings, several processes, Orbax checkpoints, loop timing, metric files, the
workdir's config record, the base config and allocator tuning. The bottom layer: it imports no
other part of cdm_jax."""
