"""The `tangpoem` command: data, train, generate, checkpoints, grade, notebooks, demo, app, export.

The steps that run a model take `--config FILE` and repeated `--set key=value` (export reads the config its
checkpoint was trained with). Bad input is one line on stderr and exit status 2; a run that cannot go on, one
line and exit status 1; never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from tangpoem.config import Config, load_config, parse_set, shipped_config_names
from tangpoem.errors import InputError, RunError, speak_to


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help=f"YAML config file, or the name of a shipped one ({', '.join(shipped_config_names())})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key (repeatable), e.g. --set learning_rate=1e-4")
    parser.add_argument("--data-dir", help="directory of the course files (default: $TANGPOEM_DATA_DIR or data/GenAI-Hw5)")


def config_from_args(args: argparse.Namespace) -> Config:
    overrides: dict[str, object] = dict(parse_set(args.overrides))
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = args.data_dir
    return load_config(args.config, overrides)


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from tangpoem import data

    for path in data.fetch(args.data_dir, **({"base_url": args.base_url} if args.base_url else {})):
        print(f"ok  {path}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from tangpoem import data

    counts = data.check(args.data_dir)
    print(f"ok  {data.resolve_data_dir(args.data_dir)}: {counts['train']} training rows, "
          f"{counts['test']} test rows, {counts['gt']} ground-truth lines")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tangpoem.train import train

    result = train(config_from_args(args), resume=args.resume, force=args.force)
    print(f"checkpoints: {', '.join(p.name for p in result.checkpoints)}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from tangpoem.config import describe
    from tangpoem.generate import generate_test_results

    adapter = None if args.no_adapter else (args.adapter or "auto")
    cfg = config_from_args(args)
    print(describe(cfg))
    files = generate_test_results(cfg, adapter)
    print(f"wrote {files.txt} and {files.json} (loading {files.load_seconds:.1f} s, generating {files.generate_seconds:.1f} s)")
    return 0


def cmd_checkpoints(args: argparse.Namespace) -> int:
    from tangpoem.checkpoints import checkpoint_evaluation, checkpoint_step, list_checkpoints, picked_index
    from tangpoem.evaluate import describe_figures

    cfg = config_from_args(args)
    checkpoints = list_checkpoints(cfg.output_dir)
    if not checkpoints:
        print(f"{cfg.output_dir}: no checkpoints")
        return 0
    picked = picked_index(checkpoints, cfg.checkpoint_index, cfg.best_metric)
    by = f" (best {cfg.best_metric})" if cfg.checkpoint_index == "best" else ""
    for index, path in enumerate(checkpoints):
        figures = checkpoint_evaluation(path)
        scores = f"{describe_figures(figures)}  " if figures else ""
        mark = f"  <- checkpoint_index{by}" if index == picked else ""
        print(f"[{index:2d}] [{index - len(checkpoints):3d}]  step {checkpoint_step(path):5d}  {scores}{path}{mark}")
    if picked is None:
        print(f"checkpoint_index = {cfg.checkpoint_index!r} picks none of these"
              + (" (no validation figures: train with val_size > 0)" if by else ""))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tangpoem.demo import run_demo

    if args.config is None:
        args.config = "nano-cpu"
    return run_demo(config_from_args(args))


def cmd_app(args: argparse.Namespace) -> int:
    from tangpoem.app import Poet, build_app, launch, refuse_busy_port
    from tangpoem.config import describe

    if args.config is None:
        args.config = "nano-cpu"
    cfg = config_from_args(args)
    print(describe(cfg))
    refuse_busy_port(args.host, args.port)
    launch(build_app(Poet.load(cfg)), args.host, args.port, args.share)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tangpoem.export import export_command

    return export_command(args.adapter, args.out, merged=args.merged, dtype=args.dtype, grades=args.grades,
                          overrides=parse_set(args.overrides), force=args.force, repo=args.push_to_hub,
                          private=args.private, dry_run=args.dry_run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tangpoem", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="fetch or check the course dataset").add_subparsers(dest="data_command", required=True)
    fetch = data.add_parser("fetch", help="download the course files from the pinned commit, SHA-256 checked")
    fetch.add_argument("--data-dir")
    fetch.add_argument("--base-url", help=argparse.SUPPRESS)  # tests serve the files from 127.0.0.1
    fetch.set_defaults(func=cmd_data_fetch)
    check = data.add_parser("check", help="validate the course files")
    check.add_argument("--data-dir")
    check.set_defaults(func=cmd_data_check)

    train = sub.add_parser("train", help="LoRA fine-tuning")
    _config_args(train)
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    train.add_argument("--force", action="store_true",
                       help="with --resume: continue even where the config changes what is learned (it is refused otherwise)")
    train.set_defaults(func=cmd_train)

    generate = sub.add_parser("generate", help="generate the test poems into results.txt / results.json")
    _config_args(generate)
    which = generate.add_mutually_exclusive_group()
    which.add_argument("--adapter", help="adapter directory (default: the checkpoint picked by checkpoint_index)")
    which.add_argument("--no-adapter", action="store_true", help="the base model, before fine-tuning")
    generate.set_defaults(func=cmd_generate)

    checkpoints = sub.add_parser("checkpoints", help="list checkpoints, their validation figures, and the one checkpoint_index picks")
    _config_args(checkpoints)
    checkpoints.set_defaults(func=cmd_checkpoints)

    for register in _optional_commands():
        register(sub)
    return parser


def _optional_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Sub-commands that live beside their own code (grading, notebooks, demo, app, export)."""
    from tangpoem.grade.cli import add_grade_arguments, run_grade
    from tangpoem.notebooks import add_notebooks_arguments, run_notebooks

    def grade(sub: argparse._SubParsersAction) -> None:
        p = sub.add_parser("grade", help="score results.txt files against Tang_testing_gt.txt")
        add_grade_arguments(p)
        p.set_defaults(func=run_grade)

    def notebooks(sub: argparse._SubParsersAction) -> None:
        p = sub.add_parser("notebooks", help="run the teaching notebooks headless (papermill)")
        add_notebooks_arguments(p)
        p.set_defaults(func=run_notebooks)

    def demo(sub: argparse._SubParsersAction) -> None:
        p = sub.add_parser("demo", help="the whole homework on the embedded tangpoem-nano, offline, in minutes")
        _config_args(p)
        p.set_defaults(func=cmd_demo)

    def app(sub: argparse._SubParsersAction) -> None:
        p = sub.add_parser("app", help="try a model in the browser: base and fine-tuned side by side (Gradio)")
        _config_args(p)
        p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
        p.add_argument("--port", type=int, default=7860, help="port to serve on")
        p.add_argument("--share", action="store_true", help="also a public gradio.live link (72 hours)")
        p.set_defaults(func=cmd_app)

    def export(sub: argparse._SubParsersAction) -> None:
        p = sub.add_parser("export", help="a checkpoint's LoRA adapter, or the merged model, with a model card")
        p.add_argument("out", metavar="OUT", help="the folder to write (new, or empty; --force replaces it)")
        p.add_argument("--adapter", required=True, metavar="DIR", help="a checkpoint folder (output_dir/checkpoint-N)")
        p.add_argument("--merged", action="store_true",
                       help="the adapter merged into the (dequantized) base model: a plain transformers model")
        p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16",
                       help="--merged: the weights' dtype (default bfloat16, Breeze's own)")
        p.add_argument("--grades", metavar="FILE", help="a grades.json of this checkpoint's results, for the card")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a key of the checkpoint's training config, e.g. model_name_or_path=/path/to/base")
        p.add_argument("--force", action="store_true", help="replace OUT if it exists")
        p.add_argument("--push-to-hub", metavar="REPO", help="upload OUT to this Hugging Face Hub repository")
        p.add_argument("--private", action="store_true", help="--push-to-hub: create the repository private")
        p.add_argument("--dry-run", action="store_true", help="--push-to-hub: list what would be uploaded, upload nothing")
        p.set_defaults(func=cmd_export)

    return [grade, notebooks, demo, app, export]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    speak_to("cli")  # messages name `--set key=value`, also after a notebook helper spoke to a notebook in this process
    try:
        return int(args.func(args) or 0)
    except (InputError, RunError) as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
