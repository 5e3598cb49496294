"""Every command line: `cdm-train`, `cdm-generate`, `cdm-evaluate`, `cdm-distill`, `cdm-readout`
(also `python -m cdm_jax.cli.NAME`), and what they share: flags, one error contract and the
`FIELD=VALUE` override parser."""
