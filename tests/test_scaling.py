"""cdm_jax.evaluation.scaling: the plan of runs, the slope, and the command end to end on a tiny
config (slow tier)."""

import json
import math
import pathlib

import pytest

from cdm_jax.evaluation import gap_protocol, scaling
from cdm_jax.runtime import config_files

from conftest import ROOT  # tests/ is on sys.path


def test_plan_keeps_each_branch_point_in_the_largest_run(tmp_path):
  config = config_files.load(str(ROOT / "configs/tiny.py"))
  runs = scaling.plan(config, [600, 6000, 2000], [0, 1], tmp_path)
  assert [(r["seed"], r["steps"]) for r in runs] == [(0, 6000), (0, 600), (0, 2000),
                                                     (1, 6000), (1, 600), (1, 2000)]
  main, short, middle = runs[:3]
  assert tuple(main["config"].train.keep_steps) == (480, 1600)
  assert short["config"].train.branch_from == str(tmp_path / "seed0" / "steps6000")
  assert (short["config"].train.branch_step, middle["config"].train.branch_step) == (480, 1600)
  for run in runs:
    assert run["config"].train.schedule == "wsd" and run["config"].seed == run["seed"]
    assert run["config"].train.num_train_steps == run["steps"]
  assert config.train.schedule == "cosine"  # the caller's config is left alone


def test_slopes_per_seed_against_hand_fits():
  rows = [{"seed": 0, "flops": 1e12, "gap": 4.0}, {"seed": 0, "flops": 1e13, "gap": 8.0},
          {"seed": 1, "flops": 1e12, "gap": 4.0}, {"seed": 1, "flops": 1e13, "gap": 4.0},
          {"seed": 1, "flops": 1e14, "gap": None}]  # a bound is not a measured gap
  s = scaling.slopes(rows)
  assert s["per_seed"][0] == pytest.approx(math.log(2) / math.log(10))
  assert s["per_seed"][1] == pytest.approx(0.0, abs=1e-9)
  assert s["mean"] == pytest.approx(math.log(2) / math.log(10) / 2)
  assert s["spread"] == pytest.approx(math.log(2) / math.log(10))
  assert scaling.slopes([{"seed": 0, "flops": 1.0, "gap": 2.0}])["mean"] is None


@pytest.mark.slow
def test_scaling_command_end_to_end_and_resumable(corpus, tmp_path, monkeypatch):
  monkeypatch.setenv("CDM_JAX_CACHE", str(tmp_path / "cache"))
  config_path = tmp_path / "config.py"
  config_path.write_text(
      "from cdm_jax.runtime import config_files\n"
      "def get_config():\n"
      f"  c = config_files.load({str(ROOT / 'configs/tiny.py')!r})\n"
      f"  c.data.path = {str(corpus)!r}\n"
      "  c.train.warmup_steps = 2\n"
      "  return c\n")
  out = tmp_path / "scaling"
  argv = [f"--config={config_path}", "--budgets=6,10", f"--out={out}", "--num_samples=8",
          "--fractions=1/2,1"]
  scaling.main(argv)
  summary = json.loads((out / scaling.SUMMARY).read_text())
  assert [r["steps"] for r in summary["rows"]] == [6, 10]
  assert summary["rows"][0]["flops"] < summary["rows"][1]["flops"]
  assert all(r["judge_ppl"] > 1 for r in summary["rows"])
  branch = json.loads((out / "seed0/steps6/config.json").read_text())
  assert branch["train"]["branch_from"] == str(out / "seed0/steps10")
  assert branch["train"]["branch_step"] == 5  # 6 - round(0.2 * 6)
  assert (out / scaling.TABLE).read_text().count("| tiny") == 0  # named after the config file
  assert (out / scaling.TABLE).read_text().count("| config |") == 2
  # A rerun measures nothing again.
  monkeypatch.setattr(gap_protocol, "measure", lambda *_: pytest.fail("measured again"))
  scaling.main(argv)
  assert json.loads((out / scaling.SUMMARY).read_text())["rows"] == summary["rows"]


@pytest.fixture(name="fake_runs")
def _fake_runs(monkeypatch):
  """Training and the gap protocol replaced by stand-ins; the list of GapSettings measured."""
  from cdm_jax.training import train
  seen = []
  monkeypatch.setattr(train, "train_and_evaluate", lambda config, workdir: None)

  def measure(settings):
    seen.append(settings)
    steps = int(pathlib.Path(settings.workdir).name[len("steps"):])
    return {"diffusion": {"flops": 1e11 * steps, "judge_ppl": 900.0, "empty_fraction": 0.0},
            "entropy_valid": True, "compute_gap": 3.0, "status": "measured", "num_samples": 8,
            "ar": [{"flops": 1e11, "judge_ppl": 800.0}]}

  monkeypatch.setattr(gap_protocol, "measure", measure)
  monkeypatch.setattr(gap_protocol, "write", lambda result, out: (
      out.mkdir(parents=True), (out / "compute_gap.json").write_text(json.dumps(result))))
  return seen


def test_a_recipe_of_another_shape_meets_the_ladder_and_judge_it_names(tmp_path, fake_runs):
  """--ladder_like reaches the gap protocol: without it a wider denoiser would be measured on an
  AR ladder and a judge of its own width, not those of the recipe it is compared with."""
  base = [f"--config={ROOT / 'configs/tiny.py'}", "--budgets=10", "--num_samples=8",
          "--set", "model.width=48"]
  scaling.main([*base, f"--out={tmp_path / 'named'}", "--ladder_like=BASELINE_WORKDIR"])
  scaling.main([*base, f"--out={tmp_path / 'own'}"])
  assert [s.ladder_like for s in fake_runs] == ["BASELINE_WORKDIR", None]


def test_a_later_seed_joins_the_folders_table_and_another_recipe_is_refused(tmp_path, fake_runs,
                                                                           capsys):
  out = tmp_path / "lever"
  base = [f"--config={ROOT / 'configs/tiny.py'}", "--num_samples=8", f"--out={out}",
          "--ladder_flops=1e12", "--set", "train.learning_rate=2e-3"]
  scaling.main([*base, "--budgets=10", "--seeds=0"])
  scaling.main([*base, "--budgets=10", "--seeds=1"])
  scaling.main([*base, "--budgets=6", "--seeds=1"])  # a budget of its own: not a branch here
  summary = json.loads((out / scaling.SUMMARY).read_text())
  assert [(r["seed"], r["steps"]) for r in summary["rows"]] == [(0, 10), (1, 6), (1, 10)]
  assert (summary["seeds"], summary["budgets"]) == ([0, 1], [6, 10])
  assert len(fake_runs) == 3  # nothing measured twice
  assert (out / scaling.TABLE).read_text().count("| 1 | 10 |") == 1
  capsys.readouterr()
  for other in (["--set", "train.learning_rate=3e-3"], ["--ladder_flops=2e12"]):
    argv = [*base, *other, "--budgets=10", "--seeds=2"]
    with pytest.raises(SystemExit) as info:
      scaling.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith(f"error: {out} holds the rows of another recipe")
    assert err.count("\n") == 1 and len(fake_runs) == 3
