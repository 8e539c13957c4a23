"""Re-make the stored results the README quotes, each with the command and the git sha.

    python docs/results/reproduce.py [--work DIR]

Writes, each with its commands, the git sha and whether the tree was dirty:

- ``docs/results/experiment-transfer.json``: ``lczscale synth`` (4 cities x 4 km, 2024, seed
  0), then ``lczscale experiment transfer`` (London held out, trained on the other three
  cities' 100 m labels with ``transfer.train.yaml``) and its ``report.json``;
- ``docs/results/eval-london.json``: ``lczscale eval`` of that London map against the world's
  10 m truth (the LCZ Generator's measures with bootstrap intervals over 1 km blocks);
- ``docs/results/change-synthetic.json``: ``lczscale synth --changing-city`` (one city, 2023
  and 2024) and ``lczscale change`` of its truth cube (the transition matrix in km²).

The README's figures are read from them (``tests/unit/test_readme_figures.py`` fails on a
figure that is not there).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO,
                          check=True).stdout.strip()


def run(command: list[str]) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def run_json(command: list[str]) -> dict:
    """Run a command whose last line of stdout is one JSON object; return it."""
    print("$", " ".join(command), flush=True)
    done = subprocess.run(command, check=True, cwd=REPO, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def store(name: str, commands: list[list[str]], t0: float, body: dict) -> None:
    """Write ``docs/results/<name>.json``: the commands as a user types them, the sha, the
    dirty paths and the result."""
    changed = git("status", "--porcelain", "--untracked-files=no").splitlines()
    stored = {
        "commands": [" ".join(["lczscale", *c[3:]]) for c in commands],
        "git_sha": git("rev-parse", "--short", "HEAD"),
        "dirty": bool(changed),
        "dirty_paths": changed,
        "made_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.time() - t0, 1),
    } | body
    out = HERE / f"{name}.json"
    out.write_text(json.dumps(stored, indent=1) + "\n")
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="lczscale-results-"))
    cli = [sys.executable, "-m", "lczscale.cli"]
    synth = [*cli, "synth", str(work / "world"), "--cities", "4", "--size-km", "4",
             "--years", "2024", "--seed", "0", "--overwrite"]
    experiment = [*cli, "experiment", "transfer", "--world", str(work / "world"),
                  "--out", str(work / "transfer"), "--holdout", "london",
                  "--train-config", str(HERE / "transfer.train.yaml"), "--quiet"]
    t0 = time.time()
    run(synth)
    run(experiment)
    report = json.loads((work / "transfer" / "report.json").read_text())
    store("experiment-transfer", [synth, experiment], t0, {"report": report})

    t0 = time.time()
    cities = json.loads((work / "world" / "world.json").read_text())["cities"]
    london = next(c for c in cities if c["name"] == "london")
    evaluate = [*cli, "eval", str(work / "transfer" / "london" / "coarse" / "lcz.zarr"),
                "--truth", str(work / "world" / "truth.zarr"),  # "=": west longitudes < 0
                "--bbox=" + ",".join(f"{v:.6f}" for v in london["bbox_lonlat"]), "--json"]
    store("eval-london", [synth, experiment, evaluate], t0, {"result": run_json(evaluate)})

    t0 = time.time()
    changing = [*cli, "synth", str(work / "changing"), "--cities", "1", "--size-km", "1.6",
                "--changing-city", "--years", "2023", "2024", "--seed", "0", "--overwrite"]
    change = [*cli, "change", str(work / "changing" / "truth.zarr"), "--from", "2023",
              "--to", "2024", "--json"]
    run(changing)
    store("change-synthetic", [changing, change], t0, {"matrix_km2": run_json(change)})


if __name__ == "__main__":
    main()
