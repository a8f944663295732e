"""The `tangpoem` command: data, train, generate, checkpoints, grade, notebooks, demo.

Every step takes `--config FILE` and repeated `--set key=value`; bad input is one line on stderr
and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from tangpoem.config import Config, load_config, parse_set
from tangpoem.errors import InputError, RunError, speak_to


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file, or the name of a shipped one (nano-cpu, breeze-colab-t4, "
                                         "taide-colab-t4, breeze-h100, tiny-cpu)")
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

    result = train(config_from_args(args), resume=args.resume)
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
    from tangpoem.checkpoints import checkpoint_step, list_checkpoints, picked_index

    cfg = config_from_args(args)
    checkpoints = list_checkpoints(cfg.output_dir)
    if not checkpoints:
        print(f"{cfg.output_dir}: no checkpoints")
        return 0
    picked = picked_index(len(checkpoints), cfg.checkpoint_index)
    for index, path in enumerate(checkpoints):
        mark = "  <- checkpoint_index" if index == picked else ""
        print(f"[{index:2d}] [{index - len(checkpoints):3d}]  step {checkpoint_step(path):5d}  {path}{mark}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tangpoem.demo import run_demo

    if args.config is None:
        args.config = "nano-cpu"
    return run_demo(config_from_args(args))


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
    train.set_defaults(func=cmd_train)

    generate = sub.add_parser("generate", help="generate the test poems into results.txt / results.json")
    _config_args(generate)
    which = generate.add_mutually_exclusive_group()
    which.add_argument("--adapter", help="adapter directory (default: the checkpoint picked by checkpoint_index)")
    which.add_argument("--no-adapter", action="store_true", help="the base model, before fine-tuning")
    generate.set_defaults(func=cmd_generate)

    checkpoints = sub.add_parser("checkpoints", help="list checkpoints and the one checkpoint_index picks")
    _config_args(checkpoints)
    checkpoints.set_defaults(func=cmd_checkpoints)

    for register in _optional_commands():
        register(sub)
    return parser


def _optional_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Sub-commands that live beside their own code (grading, notebooks, demo)."""
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

    return [grade, notebooks, demo]


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
