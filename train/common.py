"""What every training script shares: its command line, the data folder, resumable checkpoints and the loss log."""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CHECKPOINT_SECONDS = 300


class TrainingRun:
    """A run directory (train/runs/<name>) with its config, checkpoint, loss.csv and time budget.

    `python -m train.<model> CONFIG [--out DIR] [--minutes M] [--threads N]`: rerunning the same
    command resumes from the last checkpoint, and the clock counts the minutes already spent.
    """

    def __init__(self, description: str, log_columns: list[str]):
        parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("config", type=Path)
        parser.add_argument("--out", type=Path, default=Path("train/runs"))
        parser.add_argument("--minutes", type=float, help="override the config's training time")
        parser.add_argument("--threads", type=int, help="CPU threads for torch (default: all)")
        args = parser.parse_args()
        if args.threads:
            torch.set_num_threads(args.threads)
        self.config: dict = json.loads(args.config.read_text())
        self.minutes: float = args.minutes or self.config["minutes"]
        self.dir = args.out / self.config["name"]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint = self.dir / "checkpoint.pt"
        self.step, self.spent = 0, 0.0
        self._columns = log_columns
        self._last_checkpoint = time.perf_counter()
        self._started = time.perf_counter()

    def resume(self) -> dict | None:
        """The saved state (our own file, written by `save`), or None on a fresh run."""
        if not self.checkpoint.exists():
            return None
        state = torch.load(self.checkpoint, weights_only=False)
        self.step, self.spent = state["step"], state["seconds"]
        print(f"resumed at step {self.step} after {self.spent / 60:.1f} min", flush=True)
        return state

    def start_clock(self) -> None:
        self._started = time.perf_counter() - self.spent
        self._last_checkpoint = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._started

    @property
    def progress(self) -> float:
        """Fraction of the time budget spent."""
        return min(1.0, self.elapsed / (self.minutes * 60))

    def running(self) -> bool:
        return self.elapsed < self.minutes * 60

    def maybe_save(self, state: dict) -> None:
        """Checkpoint every few minutes (`state` holds the models' and optimisers' state dicts)."""
        if time.perf_counter() - self._last_checkpoint > CHECKPOINT_SECONDS:
            self.save(state)

    def save(self, state: dict, path: Path | None = None) -> None:
        """Checkpoint now, to `path` or to the run's resumable checkpoint."""
        torch.save({**state, "step": self.step, "seconds": self.elapsed}, path or self.checkpoint)
        self._last_checkpoint = time.perf_counter()

    def log(self, values: dict) -> None:
        """Append one row to loss.csv and print it."""
        path = self.dir / "loss.csv"
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["step", "minutes", *self._columns])
            writer.writerow([self.step, f"{self.elapsed / 60:.2f}", *(f"{values[c]:.5g}" for c in self._columns)])
        print(f"step {self.step} {self.elapsed / 60:.1f} min  " +
              "  ".join(f"{c} {values[c]:.4g}" for c in self._columns), flush=True)
