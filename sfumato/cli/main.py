"""The `sfumato` command: the parser (each command module adds its subcommands, each bound to its `run`
function with `set_defaults`) and one place that turns failures into one line and an exit code."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sfumato.version import __version__
from sfumato.cli.common import EXIT_RUNTIME, Parser
from sfumato.errors import SfumatoError


def build_parser() -> Parser:
    from sfumato.cli import animate, batch, comfy, eval, generate, image, models, serve, tools, train, views

    parser = Parser(prog="sfumato", description="Generate, edit, train, evaluate and serve latent-diffusion models.")
    parser.add_argument("--version", action="version", version=f"sfumato {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in (generate, models, train, eval, image, animate, views, comfy, batch, tools, serve):
        module.add_parsers(commands)
    return parser


def _quiet_libraries() -> None:
    """Library log lines and loading bars are noise on a terminal; our own bar reports progress."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every failure is one line on stderr: exit 2 for bad input, 1 when the work failed,
    130 for Ctrl-C. `SFUMATO_DEBUG=1` adds the traceback of unexpected errors."""
    args = build_parser().parse_args(argv)
    try:
        if args.command not in ("info", "models"):
            _quiet_libraries()
        return args.run(args)
    except SfumatoError as exc:
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        print("sfumato: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        return _fail(f"this needs the Python package {exc.name!r}, which is not installed: "
                     f"pip install {_PIP_NAMES.get(exc.name or '', exc.name)}", EXIT_RUNTIME)
    except OSError as exc:  # full disk, permissions, unreadable files outside what the commands check up front
        from sfumato.output import write_error

        return _fail(str(write_error(Path(exc.filename or "a file"), exc)), EXIT_RUNTIME)
    except MemoryError:
        return _fail("out of memory: try a smaller size or batch, or --dtype float16", EXIT_RUNTIME)
    except Exception as exc:  # a bug of ours: still one line, the traceback on request
        if os.environ.get("SFUMATO_DEBUG"):
            import traceback

            traceback.print_exc()
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        return _fail(f"internal error ({type(exc).__name__}: {first}); rerun with SFUMATO_DEBUG=1 for the "
                     "traceback and report it", EXIT_RUNTIME)


_PIP_NAMES = {"cv2": "opencv-python-headless", "PIL": "pillow", "skimage": "scikit-image", "yaml": "pyyaml"}


def _fail(message: str, code: int) -> int:
    print(f"sfumato: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
