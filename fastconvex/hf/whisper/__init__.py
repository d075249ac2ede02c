"""Whisper-specific parts: cutting the encoder's 30 s context to the clips,
and reading CTranslate2 Whisper models (the public faces are
:mod:`fastconvex.hf.ct2_whisper` and :mod:`fastconvex.hf.whisper_models`)."""
