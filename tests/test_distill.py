"""Progressive distillation: the targets against float64 NumPy on a Gaussian problem whose teacher
is known exactly, rounds that bring the student's steps onto the teacher's, resume, frozen
embeddings, and the student as `cdm_jax.load` samples it."""

import dataclasses
import json
import math
import shutil
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cdm_jax
from cdm_jax.sampling import artifacts
from cdm_jax.posttrain import distill
from cdm_jax import sampling
from cdm_jax.core import samplers
from cdm_jax.core import schedules

from conftest import ROOT

pytestmark = pytest.mark.slow  # trains, runs CLIs or several processes


def _np_alpha_sigma(t):
  """The cosine schedule in float64: gamma = cos(pi t / 2), sigma = sin(pi t / 2)."""
  t = np.asarray(t, np.float64)
  return np.cos(0.5 * np.pi * t), np.sin(0.5 * np.pi * t)


def _gaussian_teacher(scale2, xp):
  """E[x0 | x_t] for x0 ~ N(0, scale2 I), gamma scale2 / (gamma^2 scale2 + sigma^2) x_t, plus a
  tenth of the self-conditioning input (so that which input a step gets shows)."""
  def fn(x_t, t, x0_selfcond):
    if xp is np:
      gamma, sigma = _np_alpha_sigma(t)
    else:
      gamma, sigma = schedules.get_schedule("cosine").alpha_sigma(t)
    factor = gamma * scale2 / (gamma**2 * scale2 + sigma**2)
    return factor[:, None, None] * x_t + 0.1 * x0_selfcond
  return fn


def test_trajectory_targets_match_a_float64_teacher_run_and_land_on_it():
  schedule = schedules.get_schedule("cosine")
  grid = np.asarray(schedules.time_grid(schedule, 4), np.float64)  # teacher: 4 steps, student: 2
  x_init = np.random.default_rng(0).normal(size=(3, 5, 4))
  teacher = _gaussian_teacher(0.7, np)

  # float64 NumPy: the teacher's DDIM run, each step self-conditioned on the previous estimate.
  def np_ddim(x, x0, t_from, t_to):
    (g_t, s_t), (g_s, s_s) = _np_alpha_sigma(t_from), _np_alpha_sigma(t_to)
    return g_s * x0 + s_s * (x - g_t * x0) / s_t
  states, selfconds, x0_prev = [x_init], [np.zeros_like(x_init)], np.zeros_like(x_init)
  for j in range(4):
    x0_prev = teacher(states[-1], np.full(3, grid[j]), x0_prev)
    states.append(np_ddim(states[-1], x0_prev, grid[j], grid[j + 1]))
    selfconds.append(x0_prev)
  x0_final = teacher(states[4], np.full(3, grid[4]), x0_prev)
  expected = []
  for i in range(2):
    (g_t, s_t), (g_u, s_u) = _np_alpha_sigma(grid[2 * i]), _np_alpha_sigma(grid[2 * i + 2])
    ratio = s_u / s_t
    expected.append((states[2 * i + 2] - ratio * states[2 * i]) / (g_u - ratio * g_t))
  expected.append(x0_final)

  f32 = lambda a: jnp.asarray(a, jnp.float32)
  x_points, selfcond_points, times, targets = distill.trajectory_targets(
      _gaussian_teacher(0.7, jnp), f32(x_init), f32(grid), schedule)
  np.testing.assert_allclose(x_points, np.stack(states[::2]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(selfcond_points, np.stack(selfconds[::2]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(times, np.repeat(grid[::2, None], 3, axis=1), rtol=1e-6)
  np.testing.assert_allclose(targets, np.stack(expected), rtol=1e-4, atol=1e-4)
  # The defining property: the student's one DDIM step with its target lands on the teacher's two.
  for i in range(2):
    one_step = samplers.ddim_update(x_points[i], targets[i], schedule.alpha_sigma(times[i + 1]),
                                    schedule.alpha_sigma(times[i]))
    np.testing.assert_allclose(one_step, states[2 * i + 2], rtol=1e-4, atol=1e-4)


def test_config_must_halve_down_to_the_target():
  assert distill.DistillConfig(target_steps=8, teacher_steps=64).num_rounds == 3
  with pytest.raises(ValueError, match="power of two"):
    distill.DistillConfig(target_steps=8, teacher_steps=48)
  with pytest.raises(ValueError, match="power of two"):
    distill.DistillConfig(target_steps=8, teacher_steps=8)


def test_flops_of_steps_adds_each_steps_own_rounds_rate():
  from configs import tiny  # pylint: disable=g-import-not-at-top
  teacher = tiny.get_config()
  config = distill.DistillConfig(target_steps=2, teacher_steps=16, steps_per_round=5)
  assert config.num_rounds == 3
  rates = [distill.flops_per_step(teacher, config, r) for r in range(3)]
  assert rates[0] > rates[1] > rates[2] > 0  # fewer student steps, fewer teacher calls
  for steps in (0, 3, 5, 12, 15, 19):  # 19: four steps past the last round's end stay in it
    expected = sum(rates[min(i // 5, 2)] for i in range(steps))
    assert distill.flops_of_steps(teacher, config, steps) == pytest.approx(expected, rel=1e-12)


def _final_latents(generator, params, steps: int, seed: int = 0) -> np.ndarray:
  """x0_hat after `steps` DDIM steps (no clamp) from fixed noise, for 16 sequences."""
  cfg = generator.model.config
  x_init = jax.random.normal(jax.random.PRNGKey(seed), (16, cfg.seq_len, cfg.embed_dim))
  denoise = sampling.make_denoise_fn(generator.model, params, generator.schedule)
  return np.asarray(samplers.sample_loop(denoise, x_init, jax.random.PRNGKey(1),
                                         generator.schedule, steps, sampler="ddim"))


@pytest.fixture(scope="module")
def distilled(trained, tmp_path_factory):
  """A copy of the shared tiny `trained` workdir, distilled 8 -> 4 -> 2 DDIM steps (40 steps a
  round)."""
  workdir = tmp_path_factory.mktemp("teacher") / "run"
  shutil.copytree(trained[0], workdir)
  config = distill.DistillConfig(target_steps=2, teacher_steps=8, steps_per_round=40,
                                 learning_rate=3e-4, checkpoint_every_steps=30, log_every_steps=10)
  record = distill.distill(str(workdir), config)
  return workdir, config, record


def test_a_round_brings_the_students_steps_onto_the_teachers(distilled):
  workdir, _, record = distilled
  assert record["step"] == 80 and record["round"] == 2
  teacher = cdm_jax.load(str(workdir))
  student = cdm_jax.load(str(workdir), student=4)
  # From noise it never saw, the student's N steps end nearer the teacher's 2N than the teacher's
  # own N do (measured: 0.46x the teacher's distance after round 1, 0.36x after round 2; on a
  # 40-step teacher, students trained on forward-noised data instead ended 1.9x and 1.0x as far).
  for steps, generator in ((4, student), (2, cdm_jax.load(str(workdir), student=2))):
    reference = _final_latents(teacher, teacher.params, 2 * steps)
    teacher_gap = np.mean((_final_latents(teacher, teacher.params, steps) - reference) ** 2)
    student_gap = np.mean((_final_latents(generator, generator.params, steps) - reference) ** 2)
    assert student_gap < 0.8 * teacher_gap, (steps, student_gap, teacher_gap)
  # The embedding table and read-out are the teacher's, exactly.
  for name in ("table", "readout_bias"):
    np.testing.assert_array_equal(student.params["params"]["embedder"][name],
                                  teacher.params["params"]["embedder"][name])
  meta = json.loads((workdir / "students/steps_4/student.json").read_text())
  assert meta["steps"] == 4 and meta["teacher_steps"] == 8 and meta["distill_steps"] == 40
  assert 0 < meta["flops_fraction_of_teacher_training"]


def test_the_student_samples_with_its_own_step_count(distilled):
  workdir, _, _ = distilled
  student = cdm_jax.load(str(workdir), student=2)
  assert student.sample_config.num_steps == 2 and student.sample_config.sampler == "ddim"
  texts = student.sample(3, seed=0)
  assert len(texts) == 3 and texts == student.sample(3, seed=0)
  prefixed = student.sample(2, prefix="the cat")
  assert all(text.startswith("the cat") for text in prefixed), prefixed
  with pytest.raises(FileNotFoundError, match="No 16-step student"):
    cdm_jax.load(str(workdir), student=16)


def test_a_student_names_its_teacher_and_warns_when_the_model_moved_on(distilled, tmp_path):
  """A distillation records the teacher checkpoint it started from (and a resume keeps it); a
  student of an older checkpoint than the workdir's newest loads with a warning naming both."""
  workdir, _, _ = distilled
  assert json.loads((workdir / "distill" / "teacher.json").read_text()) == {
      "teacher_checkpoint_step": 20}
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  meta_file = artifacts.student_path(copy, 2) / "student.json"
  meta = json.loads(meta_file.read_text())
  assert meta["teacher_checkpoint_step"] == 20
  meta_file.write_text(json.dumps({**meta, "teacher_checkpoint_step": 10}))  # as if training went on
  with pytest.warns(UserWarning, match="from its step-10 checkpoint; the model has since trained "
                                       "to step 20"):
    cdm_jax.load(str(copy), student=2)


def test_resume_ends_where_the_uninterrupted_run_ends(distilled, tmp_path):
  workdir, config, _ = distilled
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  checkpoints = copy / "distill/checkpoints"
  assert sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) == [60, 80]
  shutil.rmtree(checkpoints / "80")  # resume from step 60, inside the second round
  shutil.rmtree(copy / "students/steps_2")
  distill.distill(str(copy), config)
  a = cdm_jax.load(str(workdir), student=2).params
  b = cdm_jax.load(str(copy), student=2).params
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a, b)
  with pytest.raises(ValueError, match="steps_per_round: 40 -> 30"):
    distill.distill(str(copy), distill.DistillConfig(target_steps=2, teacher_steps=8,
                                                     steps_per_round=30, learning_rate=3e-4))
  # A lower target continues from the last round's end with one more round (2 -> 1 step).
  record = distill.distill(str(copy), dataclasses.replace(config, target_steps=1))
  assert record["step"] == 120 and record["round"] == 3
  meta = artifacts.read_student(str(copy), 1)
  assert meta["teacher_steps"] == 2 and meta["distill_steps"] == 120
  assert len(cdm_jax.load(str(copy), student=1).sample(2)) == 2


def test_a_teacher_sampling_on_its_warp_is_distilled_and_sampled_on_it(trained, tmp_path,
                                                                         monkeypatch):
  workdir = tmp_path / "warped"
  shutil.copytree(trained[0], workdir)
  saved = json.loads((workdir / "config.json").read_text())
  saved["sample"]["time_grid"] = "warp"
  (workdir / "config.json").write_text(json.dumps(saved))
  grids = []
  original = distill.teacher_grid
  monkeypatch.setattr(distill, "teacher_grid", lambda *a, **k: grids.append(original(*a, **k))
                      or grids[-1])
  with pytest.raises(ValueError, match="multiple of the 4 devices"):
    distill.distill(str(workdir), distill.DistillConfig(target_steps=1, teacher_steps=2,
                                                        runs_per_step=2))
  distill.distill(str(workdir), distill.DistillConfig(target_steps=1, teacher_steps=2,
                                                      steps_per_round=2, runs_per_step=4))
  teacher = cdm_jax.load(str(workdir))
  warped = np.asarray(teacher._times(teacher.options(steps=2)))  # pylint: disable=protected-access
  uniform = np.asarray(schedules.time_grid(teacher.schedule, 2))
  assert np.abs(warped - uniform).max() > 1e-3  # the tiny run's warp moves the midpoint (by ~0.009)
  np.testing.assert_allclose(np.asarray(grids[0]), warped, rtol=1e-6)
  student = cdm_jax.load(str(workdir), student=1)
  assert artifacts.read_student(str(workdir), 1)["time_grid"] == "warp"
  np.testing.assert_allclose(
      np.asarray(student._times(student.sample_config)),  # pylint: disable=protected-access
      np.asarray(teacher._times(teacher.options(steps=1))), rtol=1e-6)  # pylint: disable=protected-access


def test_the_cli_refuses_a_step_count_it_cannot_halve_to(tmp_path):
  result = subprocess.run([sys.executable, "-m", "cdm_jax.cli.distill", f"--workdir={tmp_path}",
                           "--teacher_steps=12", "--target_steps=8"], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert result.stderr.startswith("error: teacher_steps must be target_steps times a power of two")


def test_the_clis_distill_and_sample_a_student(trained, tmp_path):
  """The success path of `cdm-distill` (one JSON line of the last metrics) and `cdm-generate
  --student`, on a copy of the shared workdir."""
  workdir = tmp_path / "run"
  shutil.copytree(trained[0], workdir)
  run = lambda module, *args: subprocess.run([sys.executable, "-m", module, *args],
                                             capture_output=True, text=True, cwd=ROOT, timeout=600)
  result = run("cdm_jax.cli.distill", f"--workdir={workdir}", "--teacher_steps=4",
               "--target_steps=2", "--steps_per_round=3", "--runs_per_step=4",
               "--checkpoint_every_steps=3", "--log_every_steps=3")
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads(result.stdout)
  assert record["step"] == 3 and record["round"] == 1 and math.isfinite(record["loss"])
  lines = (workdir / "distill" / "metrics.jsonl").read_text().splitlines()
  assert json.loads(lines[-1]) == record
  sampled = run("cdm_jax.cli.generate", f"--workdir={workdir}", "--student=2", "--num_samples=2")
  assert sampled.returncode == 0, sampled.stderr[-3000:]
  assert sampled.stdout.splitlines() == cdm_jax.load(str(workdir), student=2).sample(2, seed=0)


def test_a_distillation_step_on_an_fsdp_state_matches_the_replicated_one():
  """A teacher trained with train.fsdp is distilled with its student, teacher and Adam moments
  split over the mesh's 'fsdp' axis (a 2 x 2 mesh of the 4 test devices) as the train state is:
  the large leaves are sharded, and two steps give the replicated steps' losses and parameters."""
  from cdm_jax.models import builders  # pylint: disable=g-import-not-at-top
  from cdm_jax.runtime import config_files, parallel  # pylint: disable=g-import-not-at-top
  config = config_files.load(ROOT / "configs/tiny.py", {
      "data.path": "unused.txt", "train.fsdp": True, "train.fsdp_min_size": 256,
      "train.fsdp_axis_size": 2})
  model, schedule = builders.make_model(config), builders.make_schedule(config)
  distill_config = distill.DistillConfig(runs_per_step=4, teacher_steps=4, target_steps=2)
  tx = distill.make_optimizer(distill_config)
  mesh = builders.make_mesh(config)
  tokens = np.random.default_rng(0).integers(4, 32, (4, config.data.seq_len)).astype(np.int32)
  grid = distill.teacher_grid(schedule, distill_config, 0)
  results = {}
  for sharded in (False, True):
    _, specs = distill.state_layout(config, model, tx, mesh)
    if not sharded:
      specs = jax.tree.map(lambda _: jax.sharding.PartitionSpec(), specs,
                           is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    assert sharded == any(parallel.sharded_dim(s) is not None for s in jax.tree.leaves(
        specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)))
    step = distill.make_distill_step(model, schedule, tx, mesh, builders.condition_config(config),
                                     state_specs=specs)
    state = jax.device_put(distill.init_state(builders.init_params(config, model), tx, 0),
                           parallel.shardings(mesh, specs))
    losses = []
    for _ in range(2):
      state, metrics = step(state, parallel.shard_batch(tokens, mesh), grid)
      losses.append(float(metrics["loss"]))
    results[sharded] = (losses, jax.device_get(state.params))
  np.testing.assert_allclose(results[True][0], results[False][0], rtol=1e-4)
  # Adam divides by the root of the second moment: where a gradient is ~0 its rounding (the
  # reduction order differs) can move that element's update by up to the learning rate (3e-4).
  a, b = (np.concatenate([x.ravel() for x in jax.tree.leaves(results[k][1])]) for k in (True, False))
  assert np.mean(~np.isclose(a, b, rtol=1e-3, atol=1e-5)) < 0.01
  assert np.max(np.abs(a - b)) < 2 * distill_config.learning_rate


class _ContextRecorder:
  """A stand-in source-context model: embeds a row as its tokens (one latent per token, dim 1),
  denoises to zeros, and records the context every denoiser call reads."""
  def __init__(self, layout: str = "pairs", null_context: str = "zeros"):
    self.config = types.SimpleNamespace(source_context=True, context_layout=layout,
                                        null_context=null_context)
    self.contexts = []

  def apply(self, params, *args, method, **kwargs):
    del params
    if method == "embed":
      return args[0][..., None].astype(jnp.float32)
    self.contexts.append(kwargs["context"])
    return types.SimpleNamespace(x0_hat=jnp.zeros_like(args[0]))


@pytest.mark.parametrize("dropout,null_context", [(0.0, "zeros"), (0.99, "zeros"),
                                                  (0.99, "length")])
def test_distilling_a_source_context_model_honours_the_null_condition_share(dropout, null_context):
  """condition.dropout is the share of examples trained with the null source (zeros in context, or
  with null_context="length" the source's pieces UNK), as in training: 0 keeps every known source
  in context; at 0.99 none of these four rows keeps it (with this key)."""
  from cdm_jax.core import conditioning  # pylint: disable=g-import-not-at-top
  from cdm_jax.posttrain import distill_step  # pylint: disable=g-import-not-at-top
  model = _ContextRecorder(null_context=null_context)
  rows = jnp.asarray([[2, 9, 8, 3, 5, 6, 3, 0]] * 4, jnp.int32)  # BOS source EOS target EOS PAD
  condition = conditioning.ConditionConfig(source=1.0, dropout=dropout)
  distill_step.distillation_losses(model, {}, {}, rows, jnp.linspace(1.0, 0.0, 3),
                              key=jax.random.PRNGKey(0), schedule=schedules.get_schedule("cosine"),
                              condition=condition)
  context = np.asarray(model.contexts[0])[..., 0]  # [4, 8]: each row's source, or zeros
  expected = np.asarray([[2, 9, 8, 3, 0, 0, 0, 0]] * 4)  # BOS 9 8 EOS: the source row
  if dropout:
    blank = np.asarray([[2, 1, 1, 3, 0, 0, 0, 0]] * 4)  # UNK for the source's pieces
    expected = blank if null_context == "length" else 0 * expected
  np.testing.assert_array_equal(context, expected)


def test_distilling_a_positions_model_reads_the_known_row_in_context():
  """A latent model with known positions in context: the teacher and the student read each row
  with its unknown positions PAD (here every row a prefix of 3 known positions)."""
  from cdm_jax.core import conditioning  # pylint: disable=g-import-not-at-top
  from cdm_jax.posttrain import distill_step  # pylint: disable=g-import-not-at-top
  model = _ContextRecorder("positions")
  rows = jnp.asarray([[2, 9, 8, 7, 5, 6, 3, 0]] * 4, jnp.int32)
  condition = conditioning.ConditionConfig(prefix=1.0)
  distill_step.distillation_losses(model, {}, {}, rows, jnp.linspace(1.0, 0.0, 3),
                              key=jax.random.PRNGKey(0), schedule=schedules.get_schedule("cosine"),
                              condition=condition)
  for context in model.contexts:
    context = np.asarray(context)[..., 0]
    known = context != 0
    assert known[:, 0].all() and (known.sum(axis=1) < 7).all()  # BOS and a prefix, never all
    full = np.tile(np.asarray(rows), (len(context) // len(rows), 1))  # the student's calls: copies
    np.testing.assert_array_equal(context[known], full[known])
    assert (known == (np.arange(8) < known.sum(axis=1, keepdims=True))).all()  # a leading run
