"""Run by tests/test_convexity_callback.py under ``torchrun --nproc_per_node 2``:
a two-process (gloo, CPU) Trainer with a ConvexityCallback. Each process writes
what it saw to OUT/rank<r>.json: its history and how often it scored the probe."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)

from test_convexity_callback import PROBE, SCORING, classifier, trainer_for  # noqa: E402

from fastconvex import hf  # noqa: E402

out = Path(sys.argv[1])
fail = len(sys.argv) > 2 and sys.argv[2] == "fail"  # the first process's second scoring raises
model, fe = classifier()
cb = hf.ConvexityCallback(*PROBE, feature_extractor=fe, **SCORING)
scored = []
real_score = cb.score


def score(m):
    scored.append(1)
    if fail and len(scored) == 2:
        raise OSError("a probe clip could not be read")
    return real_score(m)


cb.score = score
trainer = trainer_for(model, fe, out / "run", [cb], epochs=2, ddp_backend="gloo")
rank = int(os.environ["RANK"])
try:
    trainer.train()
except Exception as exc:
    (out / f"rank{rank}.error").write_text(f"{type(exc).__name__}: {exc}")
    raise
logged = [e for e in trainer.state.log_history if "convexity/layer_0" in e]
(out / f"rank{rank}.json").write_text(
    json.dumps(
        {
            "steps": [p.step for p in cb.history],
            "scores": [p.scores.scores.tolist() for p in cb.history],
            "scored": len(scored),
            "logged": [e["step"] for e in logged],
            "world": int(os.environ["WORLD_SIZE"]),
        }
    )
)
