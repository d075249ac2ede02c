"""From audio to layer embeddings: reading audio, featurising, pooling the
hidden states (per utterance or per frame), sequences, and writing a
corpus's embeddings into a layer store (in this process or on Ray)."""
