"""TPU slices by the names users rent them under (`v5e-64`, `v4-8`, `v5p-128`, `v6e-8`, or the
compiler's `v5e:8x8`), each chip's public figures, and the slice's devices as the TPU compiler
describes them without any chip (`jax.experimental.topologies`, through libtpu).

Chip figures (per chip; docs/scaling.md names the source of each): HBM capacity, peak bf16 matmul
FLOP/s, HBM bandwidth and bidirectional inter-chip interconnect (ICI) bandwidth."""

import dataclasses
import glob
import math
import os
import re

from cdm_jax.runtime import errors

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_bytes: int
  peak_flops: float           # bf16, per second
  hbm_bytes_per_second: float
  ici_bytes_per_second: float  # bidirectional, per chip
  cores_per_chip: int         # slice names of 2-core chips count cores (v4-8: 4 chips)
  dims: int                   # 2-D or 3-D torus
  compiler_name: str          # the prefix of `get_topology_desc`'s topology names


CHIPS = {
    # cloud.google.com/tpu/docs/v4: 275 TFLOP/s, 32 GiB at 1,200 GB/s; all-reduce 1.1 PB/s over a
    # 4,096-chip pod, i.e. ~269 GB/s per chip each way.
    "v4": Chip("v4", 32 * GiB, 275e12, 1200e9, 2 * 1.1e15 / 4096, 2, 3, "v4"),
    # cloud.google.com/tpu/docs/v5e: 197 TFLOP/s, 16 GB at 819 GB/s, ICI 400 GB/s.
    "v5e": Chip("v5e", 16 * GiB, 197e12, 819e9, 400e9, 1, 2, "v5e"),
    # cloud.google.com/tpu/docs/v5p: 459 TFLOP/s, 95 GiB at 2,765 GB/s, ICI 1,200 GB/s.
    "v5p": Chip("v5p", 95 * GiB, 459e12, 2765e9, 1200e9, 2, 3, "v5p"),
    # cloud.google.com/tpu/docs/v6e: 918 TFLOP/s, 32 GB at 1,638 GB/s, ICI 800 GB/s.
    "v6e": Chip("v6e", 32 * GiB, 918e12, 1638e9, 800e9, 1, 2, "v6e"),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e", "trillium": "v6e"}

# Slice shapes by chip count (the shapes Cloud TPU offers).
_SHAPES_2D = {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
              256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16"}


@dataclasses.dataclass(frozen=True)
class Slice:
  name: str          # as the user wrote it
  chip: Chip
  shape: str         # e.g. "8x8"
  num_chips: int

  @property
  def compiler_topology(self) -> str:
    return f"{self.chip.compiler_name}:{self.shape}"


def known_slices() -> list[str]:
  """The slice names `parse_slice` takes, for error messages and docs."""
  names = []
  for chip in CHIPS.values():
    shapes = _SHAPES_3D if chip.dims == 3 else _SHAPES_2D
    names += [f"{chip.name}-{n * chip.cores_per_chip}" for n in sorted(shapes)]
  return names


def parse_slice(name: str) -> Slice:
  """`v5e-64` (chips), `v4-8` / `v5p-128` (cores: 2 per chip), `v5litepod-16`, or `v5e:8x8`."""
  text = name.strip().lower()
  match = re.fullmatch(r"([a-z0-9]+?)(?:-(\d+)|:(\d+(?:x\d+){1,2}))", text)
  kind = match and ALIASES.get(match.group(1), match.group(1))
  if not match or kind not in CHIPS:
    raise ValueError(f"Unknown TPU topology {name!r}; known: {', '.join(known_slices())} (or "
                     "the compiler's form, e.g. v5e:8x8).")
  chip = CHIPS[kind]
  shapes = _SHAPES_3D if chip.dims == 3 else _SHAPES_2D
  if match.group(3):
    shape = match.group(3)
    if len(shape.split("x")) != chip.dims:
      raise ValueError(f"{chip.name} slices are {chip.dims}-D, got {shape!r} in {name!r}.")
    return Slice(name, chip, shape, math.prod(int(x) for x in shape.split("x")))
  count = int(match.group(2))
  chips = count // chip.cores_per_chip
  if count % chip.cores_per_chip or chips not in shapes:
    raise ValueError(f"Unknown TPU topology {name!r}; known {chip.name} slices: "
                     f"{', '.join(n for n in known_slices() if n.startswith(chip.name + '-'))}.")
  return Slice(name, chip, shapes[chips], chips)


def has_tpu() -> bool:
  """Whether this machine has TPU chips attached (a TPU VM's device files)."""
  return bool(glob.glob("/dev/accel*")) or os.path.exists("/dev/vfio")


def quiet_libtpu(accelerator: str | None = None):
  """Where no chip is attached, tells an installed libtpu so (environment defaults, read when it
  loads): otherwise it probes the metadata server and prints a page of warnings at JAX's first
  use, before JAX falls back to the CPU. Several processes may then load it at once (none holds a
  chip for its lock to protect). `accelerator` (e.g. "v5litepod-64") names the slice compiled
  for. Does nothing on a TPU VM."""
  if has_tpu():
    return
  for key, value in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_WORKER_ID", "0"),
                     ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"), ("TPU_WORKER_HOSTNAMES", "localhost"),
                     ("TF_CPP_MIN_LOG_LEVEL", "3"), ("TPU_ACCELERATOR_TYPE", "v5litepod-4")):
    os.environ.setdefault(key, value)
  if accelerator:
    os.environ["TPU_ACCELERATOR_TYPE"] = accelerator


def slice_devices(tpu_slice: Slice) -> list:
  """The slice's devices as the TPU compiler knows them (one per chip: 2-core chips as megacore),
  from libtpu, with no chip attached."""
  try:
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
    import libtpu  # pylint: disable=g-import-not-at-top,unused-import  # noqa: F401
  except ImportError:
    raise errors.MissingExtraError(
        "Compiling for a TPU needs libtpu: pip install 'cdm_jax[tpu]'.") from None
  accelerator = {"v5e": "v5litepod"}.get(tpu_slice.chip.name, tpu_slice.chip.name)
  quiet_libtpu(f"{accelerator}-{tpu_slice.num_chips * tpu_slice.chip.cores_per_chip}")
  options = {"chip_config_name": "megacore"} if tpu_slice.chip.cores_per_chip > 1 else {}
  try:
    description = topologies.get_topology_desc(platform="tpu",
                                               topology_name=tpu_slice.compiler_topology,
                                               **options)
  except Exception as err:  # pylint: disable=broad-except  # libtpu's messages vary by version
    raise ValueError(f"libtpu cannot describe {tpu_slice.name} ({tpu_slice.compiler_topology}): "
                     f"{str(err).splitlines()[0]}") from None
  return list(description.devices)
