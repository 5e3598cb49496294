"""Do the tests fail when the behaviour they name is broken? Breaks the code on purpose, one way at
a time, in a copy of the repository, and runs the test that should catch it.

python tests/mutations.py [--only NAME ...] [--keep]

Each mutation replaces one exact snippet of a source file (it must occur exactly once) in a copy
of the committed tree (HEAD). The copy goes first on PYTHONPATH, so the tests (and the CLIs they start) import the broken code. The
script also runs every named test on the real code, which must pass. Prints a table and exits
non-zero when a mutation survives or a test fails on the real code.
"""

import argparse
import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Mutation:
  name: str
  file: str
  old: str
  new: str
  test: str  # a pytest node id


MUTATIONS = [
    Mutation("sampler ignores x_t (ddim)", "cdm_jax/core/samplers.py",
             "def ddim_step(denoise, inp: StepInput, schedule, eta: float = 0.0):\n  x0_hat = denoise(inp.x_t,",
             "def ddim_step(denoise, inp: StepInput, schedule, eta: float = 0.0):\n  x0_hat = denoise(0 * inp.x_t,",
             "tests/test_samplers.py::test_exact_denoiser_samples_the_two_point_data[ddim]"),
    Mutation("heun corrector into a skewed position's last time", "cdm_jax/core/samplers.py",
             "into_last = _b(inp.s <= final * (1.0 + 1e-4) + 1e-7, inp.x_t)",
             "into_last = _b(jnp.max(inp.s) <= schedule.t_min * (1.0 + 1e-4) + 1e-7, inp.x_t)",
             "tests/test_position_skew.py::test_exact_denoiser_samples_the_two_point_data_with_skew[heun]"),
    Mutation("wrong v target", "cdm_jax/core/parameterization.py",
             "target=lambda x0, eps, g, s: g * eps - s * x0", "target=lambda x0, eps, g, s: s * eps - g * x0",
             "tests/test_diffusion.py::test_training_losses_match_numpy[v]"),
    Mutation("wrong eps -> x0 conversion", "cdm_jax/core/parameterization.py",
             "to_x0=lambda raw, x_t, g, s: (x_t - s * raw) / g", "to_x0=lambda raw, x_t, g, s: (x_t - g * raw) / s",
             "tests/test_models.py::test_diffusion_lm_matches_float64_numpy[eps]"),
    Mutation("resume drops the EMA", "cdm_jax/training/train.py",
             "  state, data_state, start = restored\n",
             "  state, data_state, start = restored\n  state = state.replace(ema_params=state.params)\n",
             "tests/test_train.py::test_resume_continues_exactly"),
    Mutation("resume forgets the data position", "cdm_jax/training/train.py",
             "  run.batches.set_state(data_state)\n", "",
             "tests/test_train.py::test_resume_continues_exactly"),
    Mutation("judge cache always retrains", "cdm_jax/evaluation/ar_model.py",
             "  if info_file.is_file():", "  if False:",
             "tests/test_evaluate.py::test_judge_is_cached_and_samples_like_the_corpus"),
    Mutation("evaluate CLI prints non-JSON", "cdm_jax/cli/evaluate.py",
             "  print(evaluate.to_json(result), flush=True)", "  print(result, flush=True)",
             "tests/test_cli.py::test_evaluate_cli_prints_strict_json_and_writes_the_same"),
    Mutation("BOM kept in the first example", "cdm_jax/data/corpora.py",
             "      if number == 1 and raw.startswith(codecs.BOM_UTF8):", "      if False:",
             "tests/test_data.py::test_text_corpus_with_bom_crlf_and_unicode_separators"),
    Mutation("lines split with str.splitlines()", "cdm_jax/data/corpora.py",
             '      yield line[:-1] if line.endswith("\\r") else line', "      yield from line.splitlines()",
             "tests/test_data.py::test_jsonl_corpus_with_bom_and_a_line_separator_in_a_record"),
    Mutation("distillation target's noise ratio inverted", "cdm_jax/posttrain/distill_step.py",
             "  ratio = sigma_u / sigma_t\n", "  ratio = sigma_t / sigma_u\n",
             "tests/test_distill.py::test_trajectory_targets_match_a_float64_teacher_run_and_land_on_it"),
    Mutation("distillation's self-conditioning inputs are zeros", "cdm_jax/posttrain/distill_step.py",
             "    return (x_next, x0_hat), (x, x0_selfcond)",
             "    return (x_next, x0_hat), (x, jnp.zeros_like(x0_selfcond))",
             "tests/test_distill.py::test_trajectory_targets_match_a_float64_teacher_run_and_land_on_it"),
    Mutation("distillation resume forgets the data position", "cdm_jax/posttrain/distill.py",
             "  run.batches.set_state(data_state)\n", "",
             "tests/test_distill.py::test_resume_ends_where_the_uninterrupted_run_ends"),
    Mutation("FSDP gradients not summed over the mesh's data axis", "cdm_jax/training/steps.py",
             "jax.lax.psum(g, parallel.DATA) / num_devices", "g / num_devices",
             "tests/test_parallel.py::test_fsdp_matches_replicated_with_a_share_of_the_state_per_device[2]"),
    Mutation("a scanned stack without the 'layers' axis name", "cdm_jax/models/transformer.py",
             'metadata_params={nn.PARTITION_NAME: "layers"}', 'metadata_params={nn.PARTITION_NAME: None}',
             "tests/test_parallel.py::test_every_parameter_carries_logical_axis_names"),
    Mutation("FSDP gathers a scanned stack whole", "cdm_jax/training/steps.py",
             "  layers = diffusion_lm.SCANNED_LAYERS if model.config.scan_layers else None\n",
             "  layers = None\n",
             "tests/test_parallel.py::test_fsdp_gathers_a_scanned_stack_one_layer_at_a_time"),
]


def copy_repo(dest: pathlib.Path):
  """The committed tree (HEAD), so edits in the working tree during a run do not leak in."""
  dest.mkdir(parents=True)
  archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], capture_output=True, check=True)
  subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)


def run_test(repo: pathlib.Path, test: str) -> tuple[bool, float, str]:
  env = {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
  start = time.perf_counter()
  result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", test],
                          cwd=repo, env=env, capture_output=True, text=True)
  lines = [l for l in result.stdout.splitlines() if l.startswith(("E ", "FAILED", "ERROR"))]
  return result.returncode == 0, time.perf_counter() - start, (lines[0] if lines else "")[:110]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", nargs="*", help="run only mutations whose name contains one of these")
  parser.add_argument("--keep", action="store_true", help="keep the temporary copies")
  args = parser.parse_args()
  chosen = [m for m in MUTATIONS if not args.only or any(o in m.name for o in args.only)]
  tmp = pathlib.Path(tempfile.mkdtemp(prefix="cdm_jax_mutations_"))
  real = tmp / "real"
  copy_repo(real)
  rows, ok = [], True
  for test in dict.fromkeys(m.test for m in chosen):
    passed, seconds, _ = run_test(real, test)
    ok &= passed
    print(f"real code   {'pass' if passed else 'FAIL'}  {seconds:5.0f} s  {test}", flush=True)
  for i, mutation in enumerate(chosen):
    repo = tmp / f"mutant_{i}"
    copy_repo(repo)
    path = repo / mutation.file
    source = path.read_text()
    if source.count(mutation.old) != 1:
      raise SystemExit(f"{mutation.name}: the snippet occurs {source.count(mutation.old)} times in "
                       f"{mutation.file}; update the mutation.")
    path.write_text(source.replace(mutation.old, mutation.new))
    passed, seconds, first_error = run_test(repo, mutation.test)
    ok &= not passed
    rows.append((mutation.name, "SURVIVED" if passed else "caught", seconds, mutation.test, first_error))
    print(f"{mutation.name:50s} {rows[-1][1]:8s} {seconds:5.0f} s  {first_error}", flush=True)
  print("\n| mutation | result | test | first error line |\n|---|---|---|---|")
  for name, result, _, test, error in rows:
    print(f"| {name} | {result} | `{test.split('::')[1]}` | `{error}` |")
  if not args.keep:
    shutil.rmtree(tmp)
  sys.exit(0 if ok else 1)


if __name__ == "__main__":
  main()
