"""Ahead-of-time compilation of a run for a TPU slice it has not been given: every compiled
function the run would use, on the mesh it would build, through the real TPU compiler (libtpu) on
this host, with no chip attached.

`compile_run(config, "v5e-64")` compiles the train step (FSDP, scan and remat as configured), the
likelihood-bound step of evaluation, the sample function at the config's `sample.*` settings, a
latent config's autoencoder step and the distillation step, and reports for each, per chip: the
bytes XLA allocates (arguments, outputs, temporaries, code) against the chip's HBM, FLOPs and HBM
bytes from `cost_analysis()` (loop bodies counted once: XLA's own figure), matmul FLOPs with every
loop counted by its trip count (`program_stats.matmul_flops`) beside the analytic count of
`training.flops`, the collectives of the compiled HLO with their bytes, and a roofline lower
bound on the call's time with the tokens per second per chip and MFU it implies.

The evaluation and sample functions run while the train state is resident, so their fit is
judged with the train state's bytes added (`resident_bytes`). `check_fit` turns a report into
one-line errors; `batch_search.find_batch` searches the largest global batch that fits.
"""

import contextlib
import dataclasses
import math
import re
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cdm_jax.core import samplers
from cdm_jax.evaluation import program_stats
from cdm_jax.models import builders
from cdm_jax.models.autoencoder import TextAutoencoder
from cdm_jax.posttrain import distill_step
from cdm_jax.runtime import parallel, topology
from cdm_jax.sampling.sample_fn import make_sample_fn
from cdm_jax.training import autoencoder as ae_stage
from cdm_jax.training import flops as flops_lib
from cdm_jax.training import steps

P = jax.sharding.PartitionSpec
FUNCTIONS = ("train_step", "eval_step", "sample", "autoencoder_step", "distill_step")
FIT_FRACTION = 0.95  # of a chip's HBM a program may use: the runtime and XLA keep some


@dataclasses.dataclass
class Program:
  """One function of the run, ready to lower."""
  name: str
  fn: object                 # a jitted function
  args: tuple                # ShapeDtypeStructs with shardings
  tokens: int                # tokens one call processes (all chips)
  analytic_flops: float | None = None  # per chip per call (`training.flops`)
  during_training: bool = False  # runs beside the resident train state


def _sds(shape, dtype, mesh, spec=P()):
  return jax.ShapeDtypeStruct(shape, dtype, sharding=jax.sharding.NamedSharding(mesh, spec))


def _replicated(tree, mesh):
  return jax.tree.map(lambda x: _sds(x.shape, x.dtype, mesh), tree)


def _train_program(config, model, mesh) -> Program:
  tcfg = config.train
  tx = builders.make_model_optimizer(config)
  layout = builders.state_layout(config, model, tx, mesh)
  fn = steps.make_train_step(model, tx, builders.make_schedule(config), builders.loss_config(config),
                             mesh, global_batch=tcfg.batch_size, ema_decay=tcfg.ema_decay,
                             steps_per_call=tcfg.steps_per_call, state_specs=layout[1],
                             grad_clip_norm=tcfg.grad_clip_norm)
  k, batch, length = tcfg.steps_per_call, tcfg.batch_size, config.data.seq_len
  shape, spec = ((batch, length), P(parallel.BATCH)) if k == 1 else (
      (k, batch, length), P(None, parallel.BATCH))
  args = (builders.abstract_state(config, model, tx, mesh, layout=layout),
          _sds(shape, jnp.int32, mesh, spec), _sds(shape, jnp.bool_, mesh, spec))
  analytic = k * flops_lib.diffusion_train_flops(config)["train_executed"] / mesh.size
  return Program("train_step", fn, args, k * batch * length, analytic)


def _eval_program(config, model, mesh) -> Program:
  batch, length = config.train.batch_size, config.data.seq_len
  fn = steps.make_bound_fn(model, builders.make_schedule(config), mesh,
                           config.diffusion.bound_log_snr_max)
  params = builders.abstract_params(config, model, mesh)
  args = (params, _sds((batch, length), jnp.int32, mesh, P(parallel.BATCH)),
          _sds((2,), jnp.uint32, mesh))
  return Program("eval_step", fn, args, batch * length, during_training=True)


def _sample_program(config, model, mesh) -> Program:
  options = builders.sample_config(config)
  fn = make_sample_fn(model, builders.make_schedule(config), mesh, options)
  forward = flops_lib.diffusion_train_flops(config)["denoiser_forward"] / config.train.batch_size
  passes = options.num_steps * samplers.evaluations_per_step(options.sampler) + 1
  padded = -(-options.num_samples // mesh.size) * mesh.size
  args = (builders.abstract_params(config, model, mesh), _sds((2,), jnp.uint32, mesh))
  return Program("sample", fn, args, options.num_samples * config.data.seq_len,
                 passes * padded * forward / mesh.size, during_training=True)


def _autoencoder_program(config, mesh) -> Program:
  settings = config.autoencoder
  model = TextAutoencoder(builders.autoencoder_config(config))
  tx = builders.adamw_cosine(peak_learning_rate=settings.learning_rate,
                             warmup_steps=settings.warmup_steps, total_steps=settings.num_steps,
                             grad_clip_norm=1.0, weight_decay=settings.weight_decay)
  state = jax.eval_shape(lambda: ae_stage.init_state(model, tx, config.seed))
  batch, length = settings.batch_size, config.data.seq_len
  args = (_replicated(state, mesh), _sds((batch, length), jnp.int32, mesh, P(parallel.BATCH)))
  analytic = flops_lib.autoencoder_train_flops(model.config, batch) / mesh.size
  return Program("autoencoder_step", ae_stage.make_train_step(model, tx), args, batch * length,
                 analytic)


def _distill_program(config, model, mesh) -> Program:
  defaults = distill_step.DistillConfig()
  runs = -(-defaults.runs_per_step // mesh.size) * mesh.size
  tx = distill_step.make_optimizer(defaults)
  shapes, specs = distill_step.state_layout(config, model, tx, mesh, defaults.seed)
  fn = distill_step.make_distill_step(model, builders.make_schedule(config), tx, mesh,
                                      builders.condition_config(config), state_specs=specs)
  state = jax.tree.map(lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                                sharding=sharding),
                       shapes, parallel.shardings(mesh, specs))
  args = (state,
          _sds((runs, config.data.seq_len), jnp.int32, mesh, P(parallel.BATCH)),
          _sds((defaults.teacher_steps + 1,), jnp.float32, mesh))
  return Program("distill_step", fn, args, runs * config.data.seq_len)


def programs(config: ml_collections.ConfigDict, mesh, names=FUNCTIONS) -> list[Program]:
  """The run's compiled functions on `mesh` (a latent config adds its autoencoder step)."""
  model = builders.make_model(config)
  build = {"train_step": lambda: _train_program(config, model, mesh),
           "eval_step": lambda: _eval_program(config, model, mesh),
           "sample": lambda: _sample_program(config, model, mesh),
           "autoencoder_step": lambda: _autoencoder_program(config, mesh),
           "distill_step": lambda: _distill_program(config, model, mesh)}
  wanted = [n for n in names if n != "autoencoder_step" or builders.is_latent(config)]
  return [build[name]() for name in wanted]


@contextlib.contextmanager
def _no_persistent_cache():
  """A chipless executable can be neither stored in nor read from JAX's persistent compilation
  cache (and a CPU entry of the same program must not be tried): off while compiling. JAX decides
  once per process whether the cache is on, so that decision is reset around the compile (no
  public switch exists for it)."""
  from jax._src import compilation_cache  # pylint: disable=g-import-not-at-top
  enabled = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  compilation_cache.reset_cache()
  try:
    yield
  finally:
    jax.config.update("jax_enable_compilation_cache", enabled)
    compilation_cache.reset_cache()


_REMEDY = ("shard the state (train.fsdp), lower train.batch_size, set model.remat, or use a "
           "larger slice.")


def _largest_text(args) -> str:
  return ", ".join(f"{path} {_gib(size)}" for path, size in _largest_leaves(args))


def _largest_leaves(args, count: int = 3) -> list[tuple[str, int]]:
  """The `count` largest argument leaves by bytes per chip (after sharding): (path, bytes)."""
  sizes = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(args)[0]:
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    sizes.append((jax.tree_util.keystr(path), math.prod(shape) * jnp.dtype(leaf.dtype).itemsize))
  return sorted(sizes, key=lambda item: -item[1])[:count]


def compile_program(program: Program, chip: topology.Chip) -> dict:
  """Lowers and compiles `program`; its per-chip report (see the module doc)."""
  start = time.perf_counter()
  try:
    with _no_persistent_cache():
      compiled = program.fn.lower(*program.args).compile()
  except jax.errors.JaxRuntimeError as err:
    if "RESOURCE_EXHAUSTED" not in str(err):
      raise
    required = re.search(r"\(([\d.]+\s*[KMGT]?i?B?)\)", str(err))
    raise ValueError(
        f"{program.name} needs {required.group(1) if required else 'more'} of temporaries alone "
        f"per chip, more than a {chip.name} chip's {_gib(chip.hbm_bytes)} of HBM (the TPU "
        f"compiler refused it: {str(err).split(':', 1)[-1].strip()[:160]}); largest arguments: "
        f"{_largest_text(program.args)}; {_REMEDY}") from None
  seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis() or {}
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  total = (memory.argument_size_in_bytes + memory.output_size_in_bytes
           - memory.alias_size_in_bytes + memory.temp_size_in_bytes
           + memory.generated_code_size_in_bytes)
  num_chips = len(program.args[-1].sharding.mesh.devices.flat)
  flops = program_stats.matmul_flops(program.fn, *program.args, num_devices=num_chips)
  collectives = program_stats.collectives(compiled.as_text())
  hbm = float(cost.get("bytes accessed", 0.0))
  bound = program_stats.roofline(flops=max(flops, float(cost.get("flops", 0.0))), hbm_bytes=hbm,
                                 collective_bytes=sum(c["bytes"] for c in collectives.values()),
                                 chip=chip)
  return {
      "function": program.name, "compile_seconds": round(seconds, 1),
      "argument_bytes": memory.argument_size_in_bytes, "output_bytes": memory.output_size_in_bytes,
      "alias_bytes": memory.alias_size_in_bytes, "temp_bytes": memory.temp_size_in_bytes,
      "code_bytes": memory.generated_code_size_in_bytes, "total_bytes": total,
      "xla_flops": float(cost.get("flops", 0.0)), "xla_hbm_bytes": hbm,
      "program_flops": flops, "analytic_flops": program.analytic_flops,
      "collectives": collectives, "roofline": bound,
      "tokens_per_second_per_chip": program.tokens / num_chips / bound["seconds"],
      "roofline_mfu": flops / bound["seconds"] / chip.peak_flops,
      "largest_arguments": _largest_leaves(program.args),
  }


def compile_run(config: ml_collections.ConfigDict, slice_name: str, names=FUNCTIONS) -> dict:
  """Compiles the run of `config` for the TPU slice `slice_name` (e.g. "v5e-64"); every
  function's report, the slice and chip, and the train state's bytes per chip."""
  tpu_slice = topology.parse_slice(slice_name)
  devices = topology.slice_devices(tpu_slice)
  check_batch(config, len(devices))
  mesh = builders.make_mesh(config, devices)
  reports = [compile_program(program, tpu_slice.chip) for program in programs(config, mesh, names)]
  state_bytes = next((r["argument_bytes"] for r in reports if r["function"] == "train_step"), 0)
  for report in reports:
    resident = state_bytes if report["function"] in ("eval_step", "sample") else 0
    report["resident_bytes"] = report["total_bytes"] + resident
  return {"slice": tpu_slice.name, "topology": tpu_slice.compiler_topology,
          "chips": len(devices), "chip": dataclasses.asdict(tpu_slice.chip),
          "mesh": dict(mesh.shape), "global_batch": config.train.batch_size,
          "functions": reports}


def check_batch(config, num_chips: int):
  batch = config.train.batch_size
  if batch % num_chips:
    raise ValueError(f"train.batch_size={batch} does not split over the slice's {num_chips} "
                     f"chips; use a multiple of {num_chips}.")


def _gib(n: float) -> str:
  """Bytes as GiB, or MiB below one GiB."""
  return f"{n / topology.GiB:.2f} GiB" if n >= topology.GiB else f"{n / (1 << 20):.1f} MiB"


def check_fit(result: dict, fraction: float = FIT_FRACTION):
  """Raises ValueError naming the first function that does not fit in `fraction` of a chip's HBM:
  its bytes against the chip's, and the three largest arguments behind it."""
  hbm = result["chip"]["hbm_bytes"]
  for report in result["functions"]:
    if report["resident_bytes"] > fraction * hbm:
      largest = ", ".join(f"{path} {_gib(size)}" for path, size in report["largest_arguments"])
      beside = " with the train state resident" if report["resident_bytes"] > report[
          "total_bytes"] else ""
      raise ValueError(
          f"{report['function']} needs {_gib(report['resident_bytes'])} per chip{beside} on "
          f"{result['slice']}, more than {fraction:.0%} of a {result['chip']['name']} chip's "
          f"{_gib(hbm)} (temporaries {_gib(report['temp_bytes'])}; largest arguments: {largest}); "
          f"{_REMEDY}")


def summary_rows(result: dict) -> list[str]:
  """Markdown rows of a `compile_run` result: one per function."""
  rows = []
  hbm = result["chip"]["hbm_bytes"]
  for r in result["functions"]:
    analytic = "-" if r["analytic_flops"] is None else f"{r['analytic_flops']:.3g}"
    collectives = ", ".join(f"{k} {v['count']}x {_gib(v['bytes'])}"
                            for k, v in r["collectives"].items()) or "none"
    rows.append(
        f"| {result['slice']} | {r['function']} | {r['compile_seconds']:.0f} s | "
        f"{_gib(r['argument_bytes'])} + {_gib(r['temp_bytes'])} | "
        f"{_gib(r['resident_bytes'])} ({r['resident_bytes'] / hbm:.0%}) | "
        f"{r['xla_flops']:.3g} | {r['program_flops']:.3g} | {analytic} | {collectives} | "
        f"{r['roofline']['seconds'] * 1e3:.3g} ms ({r['roofline']['bound_by']}) | "
        f"{r['tokens_per_second_per_chip']:.4g} |")
  return rows


SUMMARY_HEADER = ("| slice | function | compile | per chip: arguments + temporaries | in use (of HBM) "
                  "| XLA FLOPs (loops once) | matmul FLOPs (loops counted) | analytic | "
                  "collectives per call | roofline | tokens/s/chip |\n"
                  "|---|---|---|---|---|---|---|---|---|---|---|")


def jsonable(result: dict) -> dict:
  """`result` with NumPy scalars as Python numbers (for json.dumps)."""
  return jax.tree.map(lambda x: x.item() if isinstance(x, np.generic) else x, result)
