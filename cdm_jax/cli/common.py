"""What every command-line entry point shares: a bad input ends the process with one readable
line on stderr and exit status 2, not a traceback; a run that fails for a reason it can name (a
checkpoint that cannot be written, a non-finite loss) with one line and exit status 1."""

import dataclasses
import functools
import importlib
import json
import logging
import pathlib
import re
import sys
import warnings

from cdm_jax.runtime import allocator, errors, periodic, topology

log = logging.getLogger(__name__)
USER_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, errors.MissingExtraError)
# Errors whose message already says what happened and what to do (checkpointing.SaveError is an
# OSError subclass; other OSErrors keep their traceback).
RUN_ERRORS = (FloatingPointError,)


class RunError(RuntimeError):
  """A run failed for a reason its message names (exit status 1, one line)."""


def _is_run_error(err: BaseException) -> bool:
  from cdm_jax.runtime import checkpointing  # pylint: disable=g-import-not-at-top  # keeps this module light
  return isinstance(err, RUN_ERRORS + (RunError, checkpointing.SaveError))


class _OrbaxErrorsOnOneLine(logging.Filter):
  """Keeps Orbax's log lines but drops their tracebacks: one failed save (a full disk) makes every
  background commit thread log the same error with a chained traceback, hundreds of lines that
  would bury the one `error:` line saying what happened and what to do."""

  def filter(self, record):
    if "orbax" in record.pathname:
      record.exc_info, record.exc_text = None, None
    return True


def _drop_closed_loop_noise(default_hook):
  """A `sys.unraisablehook` that drops asyncio's "Event loop is closed" from Orbax's background
  threads: after a failed save (a full disk) each of them reports it once more at shutdown, dozens
  of tracebacks after the one `error:` line that says what happened."""
  def hook(unraisable):
    value = unraisable.exc_value
    if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
      return
    default_hook(unraisable)
  return hook


def user_errors_exit(main):
  """Wraps an absl `main(argv)`, tuning the allocator first (`runtime.allocator`): a user error
  (`USER_ERRORS`: bad flags, configs, paths, workdirs, a missing extra; their messages say the fix)
  prints `error: ...` and exits 2; a failed checkpoint write, a non-finite loss or a `RunError`
  prints `error: ...` and exits 1; a run that SIGTERM stopped (after its checkpoint) says so on one
  line and exits 143."""
  @functools.wraps(main)
  def wrapped(argv):
    logging.getLogger("absl").addFilter(_OrbaxErrorsOnOneLine())
    sys.unraisablehook = _drop_closed_loop_noise(sys.unraisablehook)
    allocator.tune_malloc()  # before any JAX call, or it cannot apply
    topology.quiet_libtpu()  # libtpu on a machine without chips: no page of warnings
    try:
      result = main(argv)
      stopped = periodic.stopped_by_sigterm()
      if stopped is not None:  # checkpointed; a nonzero status keeps `cdm-train ... && next` here
        print(f"stopped: SIGTERM at step {stopped}, after its checkpoint; rerun the same command "
              f"to resume (exit status {periodic.PREEMPTED_EXIT_STATUS}).", file=sys.stderr)
        logging.shutdown()
        sys.exit(periodic.PREEMPTED_EXIT_STATUS)
      return result
    except USER_ERRORS as err:
      print(f"error: {err}", file=sys.stderr)
      logging.shutdown()
      sys.exit(2)
    except Exception as err:  # pylint: disable=broad-except
      if not _is_run_error(err):
        raise
      # Orbax's abandoned save coroutines are collected at exit; their warnings say nothing new.
      warnings.filterwarnings("ignore", message="coroutine .* was never awaited",
                              category=RuntimeWarning)
      print(f"error: {err}", file=sys.stderr)
      logging.shutdown()
      sys.exit(1)
  return wrapped


HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull")


def print_help(command: str, doc: str, full: bool = False):
  """The command's usage: its docstring's first paragraph and the flags the cdm_jax modules
  defined for it (with `full`, every flag absl knows too), on stdout."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  lines = [f"usage: {command} [--flag=value ...]", "", (doc or "").strip().split("\n\n")[0], "",
           "flags:"]
  for module, module_flags in sorted(flags.FLAGS.flags_by_module_dict().items()):
    if not (module.startswith("cdm_jax") or "cdm_jax" in module.split("/")) and not full:
      continue
    for flag in sorted(module_flags, key=lambda f: f.name):
      default = "" if flag.default is None else f" (default: {flag.default_as_str})"
      lines.append(f"  --{flag.name}: {flag.help}{default}")
  if "config" in flags.FLAGS:
    lines += ["", "Config keys: --config.a.b=VALUE overrides any field of the config file, type-"
              "checked; every field is documented in cdm_jax/runtime/config_base.py."]
  if not full:
    lines += ["", "--helpfull also lists the flags of absl and the libraries."]
  print("\n".join(lines))


def _command() -> tuple[str, str]:
  """(the command's name, its module's docstring), for `python -m cdm_jax.cli.X` and `cdm-X`."""
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  module = spec.name if spec and spec.name.startswith("cdm_jax.cli.") else None
  if module is None and pathlib.Path(sys.argv[0]).name.startswith("cdm-"):
    module = "cdm_jax.cli." + pathlib.Path(sys.argv[0]).name[4:]
  if module is None:
    return pathlib.Path(sys.argv[0]).name, ""
  return "cdm-" + module.rsplit(".", 1)[-1], importlib.import_module(module).__doc__ or ""


def parse_flags(argv):
  """absl's flag parsing with the error contract: a bad flag, a missing required one or a bad
  config override prints one `error: ...` line and exits 2 (absl alone prints its usage text and
  exits 1); --help (-h) lists the command's own flags and exits 0, --helpfull every flag."""
  from absl import flags  # pylint: disable=g-import-not-at-top  (absl only for the CLIs)
  asked = [arg for arg in argv[1:] if arg.split("=")[0] in HELP_FLAGS]
  if asked:
    print_help(*_command(), full=any(a.startswith("--helpfull") for a in asked))
    sys.exit(0)
  try:
    return flags.FLAGS(argv)
  except flags.Error as err:
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
  except (AttributeError, KeyError) as err:  # ml_collections: an unknown --config.a.b key
    text = str(err).replace("\\n", " ").replace("\n", " ")
    hint = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
    message = (f"unknown config key {hint.group(2)!r}; did you mean {hint.group(1)!r}?" if hint
               else f"bad config override: {text.strip(chr(39))}")
  print(f"error: {message} (see --help)", file=sys.stderr)
  sys.exit(2)


def run_main(main, argv=None):
  """`app.run` of a CLI's `main(argv)` under the error contract (`parse_flags`,
  `user_errors_exit`)."""
  from absl import app  # pylint: disable=g-import-not-at-top
  app.run(user_errors_exit(main), argv=argv or sys.argv, flags_parser=parse_flags)


def define_multihost_flags(flags):
  """--multihost and the three flags that name a run's processes (the training and sampling
  CLIs)."""
  flags.DEFINE_bool("multihost", False, "Join a multi-process run first (TPU VM pods, several GPU "
                    "hosts): on a pod JAX finds the other processes itself; elsewhere give the "
                    "three flags below (or CDM_JAX_COORDINATOR / CDM_JAX_NUM_PROCESSES / "
                    "CDM_JAX_PROCESS_ID). Each process then reads its own share of every batch.")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (implies --multihost).")
  flags.DEFINE_integer("num_processes", None, "Processes in the run (implies --multihost).")
  flags.DEFINE_integer("process_id", None, "This process's id, 0 ... num_processes - 1.")


def join_if_asked(values):
  """`distributed.initialize` when the parsed flags `values` ask for a multi-process run."""
  from cdm_jax.runtime import distributed  # pylint: disable=g-import-not-at-top  # keeps this module light
  explicit = (values.coordinator_address, values.num_processes, values.process_id)
  if values.multihost or any(x is not None for x in explicit):
    distributed.initialize(*explicit)


def run_workdir_job(config_cls, helps: dict, job, argv=None, *, workdir_help: str):
  """The CLI of a job on a trained workdir (distillation, the read-out decoder): `--workdir` and
  one integer or float flag per field of the dataclass `config_cls` (its defaults; `helps` by
  field name); runs `job(workdir, config)` and prints the JSON of what it returns."""
  # pylint: disable-next=g-import-not-at-top  (absl only for the CLIs)
  from absl import flags, logging as absl_logging
  defaults = config_cls()
  fields = dataclasses.fields(config_cls)
  flags.DEFINE_string("workdir", None, workdir_help, required=True)
  for field in fields:
    define = flags.DEFINE_float if field.type in (float, "float") else flags.DEFINE_integer
    define(field.name, getattr(defaults, field.name), helps[field.name])

  def run(unused_argv):
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax is chatty at INFO
    logging.getLogger("cdm_jax").setLevel(logging.INFO)
    values = flags.FLAGS
    config = config_cls(**{field.name: getattr(values, field.name) for field in fields})
    print(json.dumps(job(values.workdir, config)))

  run_main(run, argv)


def define_sampling_flags(flags, num_samples: int):
  """The sampling flags shared by the generate and evaluate CLIs (None: the config's value)."""
  flags.DEFINE_integer("num_samples", num_samples, "How many samples.")
  flags.DEFINE_integer("steps", None, "Sampling steps (default: the config's sample.num_steps).")
  flags.DEFINE_string("sampler", None, "ddpm | ddim | euler | heun.")
  flags.DEFINE_string("clamp", None, "none | hard | soft.")
  flags.DEFINE_string("decoder", None, "readout | l2 | cosine | contextual (the workdir's trained "
                      "read-out decoder: cdm-readout).")
  flags.DEFINE_float("temperature", None, "x0_hat = softmax(logits / T) E at every step (models "
                     "predicting logits; default: the config's sample.logit_temperature).")
  flags.DEFINE_float("guidance_scale", None, "Classifier-free guidance weight of conditional "
                     "samples (0: off; needs a prefix, template or source).")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")


def sampling_overrides(flag_values) -> dict:
  """The sampling flags' values as `Generator.options` overrides (None: the config's value)."""
  names = {"steps": "num_steps", "sampler": "sampler", "clamp": "clamp", "decoder": "decoder",
           "temperature": "logit_temperature", "guidance_scale": "guidance_scale"}
  return {option: getattr(flag_values, flag) for flag, option in names.items()}
