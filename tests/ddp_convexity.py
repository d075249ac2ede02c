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
model, fe = classifier()
cb = hf.ConvexityCallback(*PROBE, feature_extractor=fe, **SCORING)
scored = []
real_score = cb.score
cb.score = lambda m: scored.append(1) or real_score(m)
trainer = trainer_for(model, fe, out / "run", [cb], epochs=2, ddp_backend="gloo")
trainer.train()
rank = int(os.environ["RANK"])
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
