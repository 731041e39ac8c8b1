"""Early stopping: end a run whose eval metric stopped improving.

    stopping = EarlyStopping.from_config(config.train.early_stopping, saved)
    stopping.update(step, eval_metrics)   True when the run should stop at `step`
    stopping.state()                      the JSON saved in every checkpoint's meta

`train.early_stopping = dict(metric="eval_loss", mode="min", patience=3,
min_delta=0.0)` counts the evaluations during training (every train.eval_every
steps; not the one before the first step) since the best one: an evaluation
improves when it beats the best by more than `min_delta`. After `patience`
evaluations without improvement the run saves, logs why and ends. The count
and the best are saved with every checkpoint, so a resumed run continues them
exactly (it stops where the uninterrupted run stops); a run that already stopped
early and is started again trains no further.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class EarlyStopping:
  metric: str
  mode: str = "min"
  patience: int = 3
  min_delta: float = 0.0
  best: float | None = None
  best_step: int | None = None
  evals_since_best: int = 0
  stopped_at: int | None = None  # the step the run stopped at, once it has

  @classmethod
  def from_config(cls, section, saved: dict | None = None) -> "EarlyStopping | None":
    """train.early_stopping's settings with the state `saved` in a checkpoint; None when off."""
    if not section or not section.get("metric"):
      return None
    out = cls(section.metric, section.mode, section.patience, section.min_delta)
    if saved and saved.get("metric") == out.metric:
      for name in ("best", "best_step", "evals_since_best", "stopped_at"):
        setattr(out, name, saved.get(name))
      out.evals_since_best = out.evals_since_best or 0
    return out

  def improves(self, value: float) -> bool:
    if self.best is None:
      return True
    if self.mode == "min":
      return value < self.best - self.min_delta
    return value > self.best + self.min_delta

  def update(self, step: int, metrics: dict) -> bool:
    """Takes the evaluation at `step`; True when the run should stop here."""
    value = float(metrics[self.metric])
    if self.improves(value):
      self.best, self.best_step, self.evals_since_best = value, step, 0
    else:
      self.evals_since_best += 1
    if self.evals_since_best >= self.patience:
      self.stopped_at = step
      return True
    return False

  def reason(self) -> str:
    """Why the run stopped, in words."""
    return (f"{self.metric} has not improved on {self.best:.6g} (step {self.best_step}) by more "
            f"than {self.min_delta:g} in {self.evals_since_best} evaluations "
            f"(train.early_stopping.patience={self.patience})")

  def state(self) -> dict:
    return {"metric": self.metric, "best": self.best, "best_step": self.best_step,
            "evals_since_best": self.evals_since_best, "stopped_at": self.stopped_at}
