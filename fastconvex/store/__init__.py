"""The layer store: one model's hidden states on one dataset, on disk.

A store is a directory::

    STORE/
      store.json            the manifest (below), written last
      layer_000.npy ...     one (N, D) .npy per layer, float16/float32/float64,
                            memory-mappable (``numpy.load(..., mmap_mode="r")``)
      labels/labels.npy     the (N,) labels when they form a plain numpy array
                            (ints, floats, bools, strings, bytes) ...
      labels/labels.json    ... or, for mixed or other hashable labels, a JSON list
                            with tagged values (tuples, bytes; no pickle, ever)
      labels/utterance.npy  optional (N,) int64: the utterance of each row when
                            the rows are frames (a *frame store*)

``store.json`` holds ``format`` ("fastconvex-layer-store"), ``version`` (1),
``n_points``, one entry per layer (``file``, ``shape``, ``dtype``, ``sha256`` of
the array's bytes), the labels' and utterance index's file and ``sha256``,
``meta`` (the caller's metadata: model, checkpoint, pooling ...) and
``versions`` (library versions). The store's fingerprint is a sha256 over the
files' hashes and shapes (the content, not when it was written).

In a frame store each utterance's rows are contiguous and in time order, and
``meta["ignored_frames"]`` counts valid frames left out (frame labels -100;
``pooled_hidden_states`` records it). With none left out every utterance is a
whole sequence: ``LayerStore.sequences(i)`` reads layer i as padded
(n_utt, T_max, D) sequences plus (n_utt,) frame counts, and
``LayerStore.utterance_labels()`` gives one label per utterance (refusing,
naming the file, rows of one utterance with different labels). Euclidean
sweeps (``fastconvex.sweep(measure="euclidean")``) read stores this way.

Writes are atomic: everything goes to a hidden sibling directory that is renamed
onto ``STORE`` once complete, so a store is either whole or absent. An existing
path is never replaced without ``overwrite=True``. ``open_store`` checks every
file against the manifest (shapes, dtypes, sizes; the labels' and utterance
index's sha256; no file resolving outside the store) and names the file that
is missing, truncated, changed or inconsistent; ``LayerStore.verify_layer(i)``
hashes a layer against its sha256 (every sweep task hashes its layer while
scoring it, from the same open file, and writes its result only once the
hash verifies; a sweep verifies a layer before it reuses a result of it). A store whose content
fails these checks raises :class:`StoreError` (a ValueError; the command line's
exit status 1). A run that finds its output directory held by another run
(``sweep``'s ``out_dir``, ``embed``'s store) raises :class:`OutputDirectoryBusy`.
"""

from __future__ import annotations

from fastconvex.core.atomic import write_json_atomic
from fastconvex.core.locks import OutputDirectoryBusy
from fastconvex.store.format import FORMAT, LAYER_DTYPES, MANIFEST, VERSION
from fastconvex.store.read import LayerStore, StoreError, open_store
from fastconvex.store.write import StoreWriter, mark_block_done, save_store

__all__ = ["LayerStore", "OutputDirectoryBusy", "StoreError", "StoreWriter", "open_store", "save_store"]
__all__ += ["FORMAT", "LAYER_DTYPES", "MANIFEST", "VERSION", "mark_block_done", "write_json_atomic"]
