"""Loading a model folder so that it is used only as it claims to be.

A Hugging Face model folder is input that fastconvex does not control: its
config may point at Python code of its own (``auto_map``), its weights may
not cover its config (transformers then fills the gaps with random values and
only warns), be truncated, or be a pickle (which can run code when loaded).
Everything here turns those into one clear error before the model is used:

- custom code is never run: ``trust_remote_code=False`` on every load, and a
  local folder whose configs that the load reads have ``auto_map`` is
  refused up front, before transformers could ask "run the custom code?";
- weights must match the model exactly: missing, unexpected or mismatched
  tensors are an error naming them, unless ``new_head=True`` allows exactly
  the tensors outside the speech encoder (a classification head that is new,
  e.g. for fine-tuning, which replaces it anyway). Two absences are no
  error, since no forward pass in eval mode reads them: SpecAugment's
  ``masked_spec_embed`` (training only) and the final LayerNorm of a model
  pruned with ``final_norm="identity"`` (restored as ``nn.Identity``);
- the weight files transformers will read (``model.safetensors``, or the
  shards its index names) are opened and their headers checked first, so a
  truncated file is named, and a folder with none says so;
- pickle weights (``pytorch_model.bin``) are read only with torch's
  ``weights_only=True`` unpickler, which rebuilds tensors and plain containers
  and cannot call arbitrary functions; a pickle that needs more is refused.
  transformers >= 4.46 takes ``weights_only`` as an argument; older versions
  have none but call ``torch.load(weights_only=True)`` themselves.
"""

from __future__ import annotations

import inspect
import json
import pickle
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = ["load_checked", "load_config", "load_feature_extractor", "refuse_custom_code"]

#: Shown per error: the first few tensor names, then how many in all.
_SHOWN = 5


def _names(keys: Iterable[Any]) -> str:
    """The first few of ``keys`` (sorted) and how many there are."""
    keys = sorted(str(k if isinstance(k, str) else k[0]) for k in keys)
    shown = ", ".join(keys[:_SHOWN])
    return f"{len(keys)} tensor{'s' if len(keys) != 1 else ''} ({shown}{', ...' if len(keys) > _SHOWN else ''})"


#: The configs a model load reads (``AutoConfig`` and the model class).
MODEL_CONFIGS = ("config.json",)
#: The configs ``AutoFeatureExtractor`` reads (it falls back on ``config.json``).
FEATURE_EXTRACTOR_CONFIGS = ("preprocessor_config.json", "config.json")


class FolderRefused(ValueError):
    """A model folder refused as it stands (its own code, an unreadable
    ``config.json``): the message is final, never wrapped again."""


def refuse_custom_code(path: str | Path, what: str = "MODEL", configs: Iterable[str] = MODEL_CONFIGS) -> None:
    """:class:`FolderRefused` (a ValueError) when a local model folder needs
    its own Python code, or its ``config.json`` is no JSON.

    Each of ``configs`` present at the top of the folder is read (only the
    configs that the load at hand reads: a ``tokenizer_config.json`` with
    ``auto_map`` does not matter where no tokenizer is loaded); one with an
    ``auto_map`` entry names classes in the folder's own ``.py`` files, which
    transformers would import (and run). fastconvex never runs a model
    folder's code, so such a folder is refused here, before transformers is
    asked to load it. A hub id (no local folder) is left to
    ``trust_remote_code=False``.
    """
    root = Path(path)
    if not root.is_dir():
        return
    for name in configs:
        config = root / name
        if not config.is_file():
            continue
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            if config.name == "config.json":
                raise FolderRefused(f"{what} {str(root)!r}: {config.name} is not readable JSON ({exc})") from None
            continue
        auto_map = data.get("auto_map") if isinstance(data, dict) else None
        if auto_map:
            code = sorted(p.name for p in root.glob("*.py"))
            names = sorted(auto_map) if isinstance(auto_map, dict) else [str(auto_map)]
            raise FolderRefused(
                f"{what} {str(root)!r} needs its own Python code ({config.name} has auto_map for "
                f"{', '.join(names)}{'; code: ' + ', '.join(code[:5]) if code else ''}), and fastconvex never "
                "runs a model folder's code (trust_remote_code=False); use a model whose architecture "
                "transformers itself provides"
            )


def _guarded(load: Callable[[], Any], name: str | Path, what: str, part: str, configs: Iterable[str]) -> Any:
    """``load()`` of a model folder's ``part`` (its config, feature extractor
    or model) without running the folder's code: its ``configs`` checked for
    ``auto_map`` first, and transformers' own refusal of custom code (a hub id,
    ``trust_remote_code=False``) turned into the same one-line ValueError.
    Other errors propagate."""
    refuse_custom_code(name, what, configs)
    try:
        return load()
    except ValueError as exc:
        if "trust_remote_code" in str(exc) or "custom code" in str(exc):
            raise FolderRefused(
                f"{what} {str(name)!r}: {part} needs its own Python code, and fastconvex never "
                "runs a model's code (trust_remote_code=False)"
            ) from None
        raise


def load_config(name: str | Path, what: str = "MODEL") -> Any:
    """``AutoConfig`` of a model folder or hub id, never running its code."""
    import transformers

    try:
        return _guarded(
            lambda: transformers.AutoConfig.from_pretrained(str(name), trust_remote_code=False),
            name,
            what,
            "its config",
            MODEL_CONFIGS,
        )
    except FolderRefused:
        raise
    except ValueError as exc:
        raise ValueError(f"{what} {str(name)!r}: cannot load its config: {exc}") from None
    except OSError as exc:
        raise FileNotFoundError(f"{what} {str(name)!r}: cannot load its config: {exc}") from None


def load_feature_extractor(name: str | Path, what: str = "MODEL") -> Any:
    """The model's own feature extractor, or None when it has none (never its code)."""
    import transformers

    try:
        return _guarded(
            lambda: transformers.AutoFeatureExtractor.from_pretrained(str(name), trust_remote_code=False),
            name,
            what,
            "its feature extractor",
            FEATURE_EXTRACTOR_CONFIGS,
        )
    except FolderRefused:
        raise
    except (ValueError, OSError):  # no preprocessor_config.json: the caller picks a default
        return None


#: The weight files ``from_pretrained`` reads from a local folder, in its order of preference.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _check_weight_files(root: Path, what: str) -> None:
    """The folder must hold weights transformers loads (``WEIGHT_FILES``), and
    each ``.safetensors`` file it will read -- ``model.safetensors``, or the
    shards that ``model.safetensors.index.json`` names -- must open with a
    complete header (a truncated or corrupt file is named here; transformers'
    error would not name it). Other files (an adapter's, an optimizer's) are
    never read, so never checked."""
    from safetensors import safe_open

    present = [name for name in WEIGHT_FILES if (root / name).is_file()]
    if not present:
        raise ValueError(f"{what} {str(root)!r} has no weight files (looked for {', '.join(WEIGHT_FILES)})")
    if present[0] == "model.safetensors":
        files = [root / "model.safetensors"]
    elif present[0] == "model.safetensors.index.json":
        index = root / "model.safetensors.index.json"
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = [root / name for name in sorted(set(weight_map.values()))]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(
                f"{what} {str(root)!r}: {index.name} is not a readable shard index ({type(exc).__name__}: {exc})"
            ) from None
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise ValueError(
                f"{what} {str(root)!r}: {index.name} names shard(s) the folder lacks: "
                f"{', '.join(absent[:_SHOWN])}{', ...' if len(absent) > _SHOWN else ''}"
            )
    else:
        return  # pickle weights: read with weights_only=True, their errors named in load_checked
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as handle:
                handle.keys()
        except Exception as exc:  # noqa: BLE001 - SafetensorError is no public class; any failure is the file
            raise ValueError(
                f"{what} {str(root)!r}: {f.name} is not a complete safetensors file "
                f"({' '.join(str(exc).split())}); the weights are truncated or corrupt"
            ) from None


def _takes_weights_only(cls: Any) -> bool:
    """Whether ``cls.from_pretrained`` has the ``weights_only`` argument
    (transformers >= 4.46). Older versions have none -- passed, it would reach
    the model's ``__init__`` and fail -- but already read pickle weights with
    ``torch.load(weights_only=True)`` on the torch versions fastconvex needs."""
    try:
        return "weights_only" in inspect.signature(cls.from_pretrained).parameters
    except (TypeError, ValueError):
        return False


def _pickle_refused(exc: BaseException) -> pickle.UnpicklingError | None:
    """The ``UnpicklingError`` of torch's weights-only unpickler behind ``exc``
    (transformers may wrap it in an ``OSError`` "Unable to load weights"), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, pickle.UnpicklingError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _encoder_part(model: Any) -> tuple[str, set[str]]:
    """(state-dict prefix of the speech encoder, names directly under it):
    what ``new_head`` must leave complete."""
    from fastconvex.hf.models.layout import speech_encoder

    enc = speech_encoder(model)
    prefix = next((name for name, module in model.named_modules() if module is enc), "")
    children = {name for name, _ in enc.named_children()}
    children |= {name for name, _ in enc.named_parameters(recurse=False)}
    children |= {name for name, _ in enc.named_buffers(recurse=False)}
    return prefix, children


def _in_encoder(key: str, prefix: str, children: set[str]) -> bool:
    if prefix:
        return key.startswith(prefix + ".")
    return key.split(".", 1)[0] in children


def _identity_norm_keys(model: Any) -> set[str]:
    """The final LayerNorm's tensors of a model pruned with ``final_norm="identity"``:
    saved without them (an ``nn.Identity`` has none), restored as ``nn.Identity``
    by ``restore_final_norm``, so never random values."""
    from fastconvex.hf.models.layout import final_norm_module

    if getattr(model.config, _FINAL_NORM_FLAG, None) != "identity":
        return set()
    site = final_norm_module(model)
    if site is None:
        return set()
    norm = getattr(*site)
    prefix = next((name for name, module in model.named_modules() if module is norm), None)
    if prefix is None:
        return set()
    return {f"{prefix}.{name}" for name in norm.state_dict()}


def load_checked(cls: Any, name: str | Path, *, new_head: bool = False, what: str = "MODEL", **kwargs: Any) -> Any:
    """``cls.from_pretrained(name)`` that loads only what the folder claims.

    Parameters
    ----------
    cls : a transformers model class
    name : model folder (or hub id)
    new_head : bool
        Allow the tensors outside the speech encoder to be missing from the
        weights (freshly initialised: a new head) or left unused (a head that
        is dropped). The encoder itself must always load exactly.
    what : how errors name the model ("MODEL", "--model")
    **kwargs : further ``from_pretrained`` arguments

    Raises
    ------
    ValueError
        Custom code, a truncated ``.safetensors`` file, a pickle that needs more
        than tensors, or weights that do not match the model (naming the tensors).
    """
    from fastconvex.hf.quiet import quiet_transformers

    root = Path(name)
    local = root.is_dir()
    if local:
        refuse_custom_code(name, what)  # before the weight files, which are large
        if not {"variant", "subfolder", "gguf_file", "use_safetensors", "state_dict"} & kwargs.keys():
            _check_weight_files(root, what)  # (other file names then: transformers' own errors apply)
    options = dict(
        trust_remote_code=False, output_loading_info=True, ignore_mismatched_sizes=True
    )  # mismatches are reported by name below, never re-initialised
    options.update(kwargs)
    options.update(output_loading_info=True, trust_remote_code=False)
    if _takes_weights_only(cls):
        options["weights_only"] = True

    def load() -> Any:
        # transformers' own load report goes to the log; its content is checked (and raised) below
        with quiet_transformers(progress_bars=True):
            return cls.from_pretrained(str(name), **options)

    try:
        model, info = _guarded(load, name, what, "the model", ())  # a local folder is checked above
    except FolderRefused:
        raise
    except (pickle.UnpicklingError, EOFError, RuntimeError, OSError, ValueError) as exc:
        refused = _pickle_refused(exc)
        if refused is not None:
            raise ValueError(
                f"{what} {str(name)!r}: its pickle weights need more than tensors to load "
                f"({str(refused).splitlines()[0]}); fastconvex reads pickle weights only with torch's "
                "weights_only=True, since loading a pickle can run code: convert them to .safetensors where "
                "you trust them"
            ) from None
        if isinstance(exc, ValueError):
            raise
        text = " ".join(str(exc).split())
        if isinstance(exc, OSError) and not local:
            raise FileNotFoundError(f"{what} {str(name)!r}: cannot load its weights: {text}") from None
        raise ValueError(
            f"{what} {str(name)!r}: cannot load its weights ({type(exc).__name__}: {text}); "
            "are the weight files truncated or corrupt?"
        ) from None
    missing, unexpected = set(info.get("missing_keys") or ()), set(info.get("unexpected_keys") or ())
    missing -= _identity_norm_keys(model)
    # SpecAugment's mask vector: used only while training with mask_time_prob > 0, where a fresh one is
    # what the recipes start from; many published checkpoints (facebook/wav2vec2-base-960h) lack it
    missing = {k for k in missing if k.rsplit(".", 1)[-1] != "masked_spec_embed"}
    mismatched = {k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys") or ()}
    prefix, children = _encoder_part(model)
    # the hint about a new head helps only where the tensors at fault are a head's (outside the encoder)
    head_at_fault = any(not _in_encoder(k, prefix, children) for k in missing | unexpected)
    if new_head:
        missing = {k for k in missing if _in_encoder(k, prefix, children)}
        unexpected = {k for k in unexpected if _in_encoder(k, prefix, children)}
        mismatched = {k for k in mismatched if _in_encoder(k, prefix, children)}
    arch = type(model).__name__
    problems = []
    if missing:
        problems.append(f"its weights lack {_names(missing)} of {arch}, which would be random values")
    if mismatched:
        problems.append(f"{_names(mismatched)} have other shapes in the weights than in its config")
    if unexpected:
        problems.append(f"its weights hold {_names(unexpected)} that {arch} does not use")
    errors = [" ".join(str(e).split()) for e in info.get("error_msgs") or ()]
    if errors:
        problems.append(f"loading reported: {errors[0]}")
    if problems:
        raise ValueError(
            f"{what} {str(name)!r}: "
            + "; ".join(problems)
            + ". The folder's weights do not match its config"
            + (
                " (a new classification head is allowed only where one is made, as by finetune)"
                if head_at_fault and not new_head
                else ""
            )
        )
    return model


class ModelFolderError(ValueError):
    """A model folder that cannot be used as the classifier (its weights do
    not match its config, it needs its own code, ...): the data is at fault,
    not the arguments (the command line's exit status 1)."""

    exit_status = 1


def check_model_path(name: str) -> str:
    """A local MODEL path must be a directory (checked before any work); hub ids pass."""
    local = Path(name)
    if name.startswith((".", "/", "~")) or local.exists():
        local = local.expanduser()
        if not local.is_dir():
            raise FileNotFoundError(f"MODEL {name!r} is not a model directory")
        return str(local)
    return name


def load_model(
    name: str, model_class: str | None = None, device: str | None = None, *, new_head: bool = False
) -> tuple[Any, Any]:
    """Load a model and its feature extractor from a local path or the hub.

    The class is ``model_class`` if given, else the first of ``config.architectures``
    that transformers knows, else ``AutoModel``.  The feature extractor is the
    model's own (``AutoFeatureExtractor``), or None when it has none.  The model
    is loaded only as it claims to be (:mod:`fastconvex.hf.models.load`): never its own
    code, and its weights must match it exactly -- ``new_head`` allows the
    tensors outside the speech encoder to be new or unused (a head that is
    replaced, as by finetune).  ``device`` is checked before anything is loaded.
    """
    import transformers

    from fastconvex.core.devices import check_device_here
    from fastconvex.hf.models.load import (
        load_checked,
        load_config,
        load_feature_extractor,
    )

    name = check_model_path(name)
    check_device_here(device, "--device")  # before minutes of loading; a usage error
    if model_class is not None:
        cls = getattr(transformers, model_class, None)
        if cls is None:
            raise ValueError(f"--model-class {model_class!r} is not a transformers class")
    try:  # what the model folder holds: data errors (exit status 1)
        config = load_config(name)
        if model_class is None:
            from fastconvex.hf.models.layout import resolve_model_class

            cls = resolve_model_class(config)
        # a model pruned with final_norm="identity" gets its nn.Identity back
        model = restore_final_norm(load_checked(cls, name, new_head=new_head))
        fe = load_feature_extractor(name)
    except ValueError as exc:
        raise ModelFolderError(str(exc)) from None
    if device is not None:
        model = model.to(device)
    model.eval()
    return model, fe


# the config attribute that says a model was pruned with final_norm="identity"
# (save_pruned writes it; from_pretrained would otherwise re-create a LayerNorm)
_FINAL_NORM_FLAG = "fastconvex_final_norm"


def restore_final_norm(model: Any) -> Any:
    """Replace the final LayerNorm by ``nn.Identity`` again when the config says the model was
    pruned with ``final_norm="identity"`` (``from_pretrained`` re-creates a fresh LayerNorm)."""
    import torch

    from fastconvex.hf.models.layout import final_norm_module

    if getattr(model.config, _FINAL_NORM_FLAG, None) == "identity":
        norm = final_norm_module(model)
        if norm is not None:
            setattr(norm[0], norm[1], torch.nn.Identity())
    return model
