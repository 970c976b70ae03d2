"""innerloop inside a Lightning module: the meta-learner is a submodule, a training step is the
mean query loss after adaptation (``algo(batch)``, differentiable with respect to every
meta-parameter), and Lightning owns the loop, the optimizer step, logging and checkpoints.

    pip install 'innerloop[examples]'      # pytorch-lightning (or install `lightning`)
    python examples/lightning_module.py --steps 2000

The same model, rule, seed and task stream as ``plain_loop.py``: both reach the same
meta-parameters (``tests/test_examples.py`` checks it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset

try:  # the `lightning` package, else the lighter `pytorch-lightning`
    import lightning.pytorch as pl
except ImportError:
    import pytorch_lightning as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plain_loop import build  # noqa: E402  (the model, rule and task family of the plain example)


class TaskStream(IterableDataset):
    """Meta-batches of tasks from a task family, drawn from a seeded generator (one batch per step)."""

    def __init__(self, family, meta_batch: int, seed: int):
        self.family, self.meta_batch, self.seed = family, meta_batch, seed

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed)
        while True:
            yield self.family.sample(self.meta_batch, gen)


class MetaLearner(pl.LightningModule):
    def __init__(self, seed: int = 0, meta_lr: float = 1e-3):
        super().__init__()
        self.family, self.algo = build(seed)
        self.meta_lr = meta_lr

    def training_step(self, batch, batch_idx):
        loss = self.algo(batch, path="loop").mean()  # per-task query losses after the inner loop
        self.log("meta_loss", loss, prog_bar=True, batch_size=batch.support_x.shape[0])
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.algo.meta_parameters(), lr=self.meta_lr)


def main(steps: int = 1000, meta_batch: int = 16, seed: int = 0, quiet: bool = False) -> dict:
    module = MetaLearner(seed)
    data = DataLoader(TaskStream(module.family, meta_batch, seed), batch_size=None)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=not quiet, enable_model_summary=not quiet)
    trainer.fit(module, data)
    val = module.family.fixed_tasks(100, seed=2)
    after = module.algo.evaluate(val).metric.mean().item()
    if not quiet:
        print(f"validation MSE after one inner step, after {steps} steps: {after:.4f}")
    return {"algo": module.algo, "after": after}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--meta-batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    main(a.steps, a.meta_batch, a.seed)
