"""Re-make the stored results the README quotes, each with the command and the git sha.

    python docs/results/reproduce.py [--work DIR]

Writes ``docs/results/experiment-transfer.json``: ``lczscale synth`` (4 cities x 4 km, 2024,
seed 0), then ``lczscale experiment transfer`` (London held out, trained on the other three
cities' 100 m labels with ``transfer.train.yaml``), its ``report.json`` with the commands, the
git sha and whether the tree was dirty. The README's accuracy figures are read from it
(``tests/unit/test_readme_figures.py`` fails on a figure that is not there).
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
    changed = git("status", "--porcelain", "--untracked-files=no").splitlines()
    stored = {
        "commands": [" ".join(["lczscale", *c[3:]]) for c in (synth, experiment)],
        "git_sha": git("rev-parse", "--short", "HEAD"),
        "dirty": bool(changed),
        "dirty_paths": changed,
        "made_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.time() - t0, 1),
        "report": report,
    }
    out = HERE / "experiment-transfer.json"
    out.write_text(json.dumps(stored, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
