"""What a compiled program does per chip, counted with its loops: XLA's `cost_analysis()` counts a
loop body once (a scanned 24-layer stack, or a 100-step sampler, looks 24 or 100 times cheaper),
so FLOPs and collective bytes are counted here with every loop body times its trip count.

* `matmul_flops(fn, *args, num_devices=...)`: the matmul FLOPs of the traced program
  (`jax.make_jaxpr`) per device: every `dot_general` (2 x output elements x contracted size),
  inside `shard_map` at the per-device shapes, elsewhere the global count split evenly over the
  devices (XLA's partitioner splits such programs), each `scan` body times its length, a `cond` at its costliest branch, rematerialized
  forward passes included (they are in the program the compiler gets).
* `collectives(hlo_text)`: the collectives of compiled HLO by kind, with the bytes each moves
  (its result's size), each `while` body times its trip count (read off its condition's
  `compare(counter, constant), direction=LT`).
"""

import collections
import math
import re

import jax
import numpy as np

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def _dot_flops(eqn) -> float:
  lhs, _ = (v.aval for v in eqn.invars)
  (contract_lhs, _), _ = eqn.params["dimension_numbers"]
  contracted = math.prod(lhs.shape[d] for d in contract_lhs)
  return 2.0 * math.prod(eqn.outvars[0].aval.shape) * contracted


def _sub_jaxprs(eqn):
  """(jaxpr, multiplier) of every sub-program of `eqn`."""
  name, params = eqn.primitive.name, eqn.params
  if name == "scan":
    return [(params["jaxpr"].jaxpr, params["length"])]
  if name == "cond":
    return [("max", [b.jaxpr for b in params["branches"]])]
  if name == "while":  # no static trip count in the jaxpr: counted once (sampling uses scan)
    return [(params["body_jaxpr"].jaxpr, 1), (params["cond_jaxpr"].jaxpr, 1)]
  subs = []
  for value in params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(item, jax.extend.core.ClosedJaxpr):
        subs.append((item.jaxpr, 1))
      elif isinstance(item, jax.extend.core.Jaxpr):
        subs.append((item, 1))
  return subs


def _jaxpr_flops(jaxpr, num_devices: int, inside: bool = False) -> float:
  """Per-device matmul FLOPs: inside `shard_map` the shapes are a device's own; outside it (a
  program XLA's partitioner splits, GSPMD) they are global, split evenly over `num_devices`."""
  total = 0.0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      total += _dot_flops(eqn) / (1 if inside else num_devices)
    within = inside or eqn.primitive.name == "shard_map"
    for sub, times in _sub_jaxprs(eqn):
      if sub == "max":
        total += max(_jaxpr_flops(branch, num_devices, within) for branch in times)
      else:
        total += times * _jaxpr_flops(sub, num_devices, within)
  return total


def matmul_flops(fn, *args, num_devices: int = 1) -> float:
  """Matmul FLOPs of one call of `fn(*args)` (arrays or ShapeDtypeStructs) per device, loops
  counted: inside `shard_map` at each device's shapes, elsewhere the global count over
  `num_devices` (an evenly partitioned program)."""
  return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr, num_devices)


# ------------------------------------------------------------------------------------------------
# Compiled HLO text.

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
                "f8e4m3fn": 1, "f8e5m2": 1}
_ARRAY = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\]")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*?) ([\w\-]+)\((.*)$")


def shape_bytes(shape_text: str) -> int:
  """Bytes of an HLO result type, a tuple's elements summed (layouts ignored)."""
  total = 0
  for dtype, dims in _ARRAY.findall(shape_text):
    total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
  return total


def _computations(hlo_text: str) -> dict:
  """{computation name: [(result name, result type, opcode, rest of line)]}; the entry as "ENTRY"."""
  comps, current = {}, None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header and not line.startswith(" "):
      current = "ENTRY" if line.startswith("ENTRY") else header.group(1)
      comps[current] = []
      continue
    instruction = _INSTRUCTION.match(line)
    if current is not None and instruction:
      comps[current].append(instruction.groups())
  return comps


def _trip_count(while_rest: str, comps: dict) -> int:
  """A counted loop's trip count: XLA's `known_trip_count` when it wrote one, else the N of its
  condition's `compare(i, N), direction=LT` (direct, or as a fusion of that compare) with N a
  constant of the condition; 1 when the loop is not of that form."""
  known = re.search(r'"known_trip_count":\{"n":"(\d+)"', while_rest)
  if known:
    return max(int(known.group(1)), 1)
  condition = comps.get(re.search(r"condition=%?([\w.\-]+)", while_rest).group(1), [])
  constants = {name: int(value) for name, _, op, rest in condition if op == "constant"
               for value in re.findall(r"^(-?\d+)\)", rest)}
  for _, _, op, rest in condition:
    called = re.search(r"calls=%?([\w.\-]+)", rest)
    is_less = (op == "compare" and "direction=LT" in rest) or (
        op == "fusion" and called and any(o == "compare" and "direction=LT" in r
                                          for _, _, o, r in comps.get(called.group(1), [])))
    if is_less:
      for operand in re.findall(r"%([\w.\-]+)", rest.split(")")[0])[1:]:
        if operand in constants:
          return max(constants[operand], 1)
  return 1


def collectives(hlo_text: str) -> dict:
  """{kind: {"count": executions per call, "bytes": bytes moved per chip per call}} over the
  compiled module, loops counted by their trip counts, a conditional by its costliest branch
  (async `-start` ops counted, `-done` not)."""
  comps = _computations(hlo_text)

  def visit(name: str, depth: int = 0) -> collections.Counter:
    totals = collections.Counter()
    if name not in comps or depth > 64:
      return totals
    for _, shape, op, rest in comps[name]:
      kind = op[:-len("-start")] if op.endswith("-start") else op
      if kind in COLLECTIVES:
        totals[(kind, "count")] += 1
        totals[(kind, "bytes")] += shape_bytes(shape)
      if op == "while":
        body = re.search(r"body=%?([\w.\-]+)", rest).group(1)
        trips = _trip_count(rest, comps)
        for key, value in visit(body, depth + 1).items():
          totals[key] += trips * value
      elif op == "conditional":
        names = re.findall(r"%?([\w.\-]+)", re.search(r"branch_computations=\{([^}]*)\}",
                                                       rest).group(1))
        branches = [visit(branch, depth + 1) for branch in names]
        totals += max(branches, key=lambda c: sum(v for (k, f), v in c.items() if f == "bytes"),
                      default=collections.Counter())
      elif op in ("call", "async-start"):
        for callee in re.findall(r"(?:to_apply|calls)=%?([\w.\-]+)", rest):
          totals += visit(callee, depth + 1)
    return totals

  found = visit("ENTRY")
  kinds = sorted({kind for kind, _ in found})
  return {kind: {"count": found[(kind, "count")], "bytes": found[(kind, "bytes")]}
          for kind in kinds}


def roofline(*, flops: float, hbm_bytes: float, collective_bytes: float, chip) -> dict:
  """The step time no schedule can beat on `chip` (a `runtime.topology.Chip`): the largest of
  FLOPs at peak, HBM bytes at full bandwidth and collective bytes at the full ICI bandwidth."""
  bounds = {"compute": flops / chip.peak_flops, "memory": hbm_bytes / chip.hbm_bytes_per_second,
            "collectives": collective_bytes / chip.ici_bytes_per_second}
  bound = max(bounds, key=bounds.get)
  return {"seconds": bounds[bound], "bound_by": bound,
          **{f"{k}_seconds": float(np.float64(v)) for k, v in bounds.items()}}
