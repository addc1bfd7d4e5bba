"""``gpubraid plan`` and ``gpubraid train --method auto`` from the command line."""
import json

import pytest

from gpubraid.cli import main as cli
from gpubraid.training.plan import CHIMERA_MARGIN
from tests.cli.launch import run_cli

TINY = ["--layers", "8", "--n-train", "200", "--n-val", "50"]


def test_plan_prints_every_split_best_first(tmp_path, capsys):
    out = tmp_path / "plan.json"
    rc = cli.main(["plan", "peaks", *TINY, "--ranks", "4", "--network", "ib", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    rows = [line.split() for line in text.splitlines() if line.split()[:1] and line.split()[0].isdigit()]
    assert {(int(r[0]), int(r[2])) for r in rows} == {(1, 4), (2, 2), (4, 1)}
    assert {r[3] for r in rows} >= {"serial", "pipeline", "oneshot"}
    times = [float(r[7]) * (1 + CHIMERA_MARGIN if r[3].endswith("/chimera") else 1) for r in rows]
    assert times == sorted(times)   # Chimera ranked with its margin
    doc = json.loads(out.read_text())
    assert doc["ranks"] == 4 and doc["network"]["name"] == "InfiniBand HDR"
    assert doc["choice"] == doc["candidates"][0] and doc["probe"]["layers"] == 8
    assert text.splitlines()[-1].startswith("plan: ")


@pytest.mark.parametrize("argv,name", [(["--ranks", "0"], "ranks"), (["--network", "nowhere"], "network"),
                                       (["--ranks", "two"], "ranks")])
def test_plan_bad_input_is_one_line(capsys, argv, name):
    rc = cli.main(["plan", "peaks", *TINY, *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("gpubraid: error:") and name in err[0], err


def test_train_auto_logs_its_choice_before_training(tmp_path):
    res = run_cli("train", "peaks", *TINY, "--iterations", "2", "--method", "auto", "--no-progress",
                  "--metrics", tmp_path / "m.json")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("plan: ") and "predicted" in lines[0] and lines[1].startswith("it ")
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["method"] == m["plan"]["choice"]["method"] and m["plan"]["line"] == lines[0]


@pytest.mark.mpi
def test_mpi_auto_every_rank_takes_rank_0s_choice(mpiexec, tmp_path):
    res = run_cli("train", "peaks", *TINY, "--iterations", "2", "--method", "auto", "--no-progress",
                  "--metrics", tmp_path / "m.json", launcher=[mpiexec, "-n", "2"], timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("plan: ") == 1 and res.stdout.count("train accuracy") == 1
    m = json.loads((tmp_path / "m.json").read_text())
    c = m["plan"]["choice"]
    assert m["ranks"] == 2 and c["D"] * c["L"] == 2 and m["config"]["data_parallel"] == c["D"]
