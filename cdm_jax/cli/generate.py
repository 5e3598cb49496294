"""`cdm-generate --workdir=DIR [--num_samples=N --steps --sampler --prefix ...]`: samples from a
trained workdir (also `python -m cdm_jax.cli.generate`)."""


from cdm_jax.cli import common
from cdm_jax.runtime import distributed, fs
from cdm_jax.sampling.generator import Generator, load


def _cli_samples(generator: Generator, f) -> list[str]:
  """The texts the generate CLI's flags ask for: sources, a template, a prefix/suffix, or free."""
  if sum(x is not None for x in (f.source, f.template, f.prefix or f.suffix)) > 1:
    raise ValueError("Give one of --source, --template, or --prefix/--suffix.")
  overrides = common.sampling_overrides(f)
  gap = {} if f.gap_length is None else {"gap_length": f.gap_length}
  if f.source:
    return generator.generate(f.source, seed=f.seed, mbr=f.mbr, **overrides)
  if f.template is not None:
    return generator.infill(f.template, f.num_samples, seed=f.seed, mbr=f.mbr, **gap, **overrides)
  return generator.sample(f.num_samples, seed=f.seed, prefix=f.prefix, suffix=f.suffix, **gap,
                          **overrides)


def _check_output(output: str):
  """--output's folder exists afterwards (created if missing); a path that cannot be written
  there is a ValueError naming it."""
  target = fs.path(output)
  if target.is_dir():
    raise ValueError(f"--output={output} is a folder; give a file path.")
  try:
    distributed.on_primary(lambda: target.parent.mkdir(parents=True, exist_ok=True),
                           f"creating the folder of {output}")
  except OSError as err:
    raise ValueError(f"--output={output}: its folder cannot be created ({err.strerror or err}).") from None


def main(argv=None):
  from absl import flags, logging as absl_logging  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("workdir", None, "A trained workdir.", required=True)
  common.define_sampling_flags(flags, num_samples=8)
  flags.DEFINE_string("prefix", None, "Continue this text (its pieces appear verbatim).")
  flags.DEFINE_string("suffix", None, "End with this text, after --gap_length generated pieces.")
  flags.DEFINE_string("template", None, "Fill the gaps of this text: ___ (--gap_length pieces) "
                      "or ___:N (N pieces), e.g. 'the ___:3 of a tree'.")
  flags.DEFINE_multi_string("source", None, "Seq2seq: one target per --source (repeatable).")
  flags.DEFINE_integer("gap_length", None, "Default gap length (template: 4, suffix: 8).")
  flags.DEFINE_integer("mbr", 1, "Candidates per template or source; the MBR one is kept.")
  flags.DEFINE_bool("raw_params", False, "Use the raw parameters instead of the EMA.")
  flags.DEFINE_integer("student", None, "Sample the N-step student that cdm-distill wrote "
                       "(N DDIM steps unless --steps says otherwise).")
  flags.DEFINE_string("matmul_dtype", None, "Override model.matmul_dtype (e.g. bfloat16).")
  flags.DEFINE_string("output", None, "Also write the samples to this file, one per line "
                      "(by process 0 of a multi-process run).")
  common.define_multihost_flags(flags)

  def run(unused_argv):
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax is chatty at INFO
    f = flags.FLAGS
    if f.output:  # before minutes of sampling: a folder to create, or an answer why not
      _check_output(f.output)
    common.join_if_asked(f)
    generator = load(f.workdir, use_ema=not f.raw_params, matmul_dtype=f.matmul_dtype,
                     student=f.student)
    texts = _cli_samples(generator, f)
    if distributed.is_primary():
      print("\n".join(texts))
    if f.output:
      distributed.on_primary(lambda: fs.write_atomic(fs.path(f.output), "\n".join(texts) + "\n"),
                             f"writing {f.output}")

  common.run_main(run, argv)


if __name__ == "__main__":
  main()
