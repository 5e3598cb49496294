"""Per-device bytes of the train state, replicated against FSDP, for a config on N devices, and
(optionally) the compiled train step's memory analysis on N fake CPU devices.

python experiments/fsdp_memory.py [--config=configs/tpu_pod_1b.py] [--devices=64] [--compile]
    [--fsdp_axis_size=N]

Bytes come from the state's shapes (`jax.eval_shape`, nothing allocated) and the logical axis
rules (`builders.state_specs`: FSDP groups of the config's train.fsdp_axis_size devices, 0: all);
`--compile` lowers and compiles the real step for the fake devices
(minutes for a large model) and prints XLA's argument/temporary byte counts per device.
"""

import argparse
import os


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", default="configs/tpu_pod_1b.py")
  parser.add_argument("--devices", type=int, default=64)
  parser.add_argument("--compile", action="store_true")
  parser.add_argument("--fsdp_axis_size", type=int, default=None,
                      help="devices per FSDP group (default: the config's train.fsdp_axis_size)")
  args = parser.parse_args()
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cdm_jax.models import builders  # pylint: disable=g-import-not-at-top
  from cdm_jax.runtime import config_files, parallel  # pylint: disable=g-import-not-at-top
  from cdm_jax.training import steps

  config = config_files.load(args.config)
  model, tx = builders.make_model(config), builders.make_optimizer(config.train)
  shapes = jax.eval_shape(lambda: builders.init_state(config, model, tx))
  params = sum(x.size for x in jax.tree.leaves(shapes.params))
  if args.fsdp_axis_size is not None:
    config.train.fsdp_axis_size = args.fsdp_axis_size
  fsdp = config.train.get("fsdp_axis_size", 0) or args.devices
  print(f"{args.config}: {params / 1e9:.3f}B parameters on {args.devices} devices "
        f"(FSDP groups of {fsdp})")
  layouts = {}
  for name, sharded in (("replicated", False), ("fsdp", True)):
    config.train.fsdp = sharded
    mesh = builders.make_mesh(config)
    specs = builders.state_specs(config, model, tx, mesh)
    layouts[name] = mesh
    leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    per_device = sum(x.size * x.dtype.itemsize // (fsdp if parallel.sharded_dim(s) is not None
                                                   else 1)
                     for x, s in zip(jax.tree.leaves(shapes), leaves))
    print(f"  {name:10s} train state per device: {per_device / 2**30:8.3f} GiB")
  if not args.compile:
    return
  for name, mesh in layouts.items():
    config.train.fsdp = name == "fsdp"
    step = steps.make_train_step(model, tx, builders.make_schedule(config),
                                 builders.loss_config(config), mesh,
                                 global_batch=config.train.batch_size, ema_decay=0.999,
                                 state_specs=builders.state_specs(config, model, tx, mesh),
                                 grad_clip_norm=config.train.grad_clip_norm)
    state = builders.abstract_state(config, model, tx, mesh)  # shapes placed as training places them
    batch = jax.ShapeDtypeStruct((config.train.batch_size, config.data.seq_len), np.int32,
                                 sharding=parallel.batch_sharding(mesh))
    mask = jax.ShapeDtypeStruct(batch.shape, np.bool_, sharding=parallel.batch_sharding(mesh))
    memory = step.lower(state, batch, mask).compile().memory_analysis()
    print(f"  compiled {name:10s} per device: arguments {memory.argument_size_in_bytes / 2**30:.3f}"
          f" GiB, temporaries {memory.temp_size_in_bytes / 2**30:.3f} GiB")


if __name__ == "__main__":
  main()
