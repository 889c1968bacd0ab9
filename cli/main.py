"""The `gencompress` command: a thin click layer over the Python API.

Subcommands are imported on first use, so `gencompress --help` and the ONNX-only
verbs never pay for importing torch. User errors (GencompressError and click's usage
errors) print one line on stderr and exit 2.
"""

from __future__ import annotations

import importlib
import signal
import sys

import click

from gencompress.errors import GencompressError

# verb -> (module that defines a click command of that name, one-line help for the listing)
COMMANDS = {
    "compress": ("gencompress.cli.compress", "Export, compress and check a generator; write model, report.json/html."),
    "export": ("gencompress.cli.export", "Export a zoo or user PyTorch generator to ONNX, with a parity check."),
    "prune": ("gencompress.cli.prune", "Prune weights: unstructured magnitude, N:M, or whole channels."),
    "quantize": ("gencompress.cli.quantize", "Quantize: static int8 QDQ, weight-only int8/int4, or fp16."),
    "sensitivity": ("gencompress.cli.quantize", "Rank layers by the damage int8 does to the output."),
    "check": ("gencompress.cli.check", "Fidelity of a candidate model against its float reference."),
    "bench": ("gencompress.cli.check", "Latency, throughput, memory and size of a model in onnxruntime."),
    "ship": ("gencompress.cli.ship", "Bundle a compressed model for edge devices: Python runner, ORT format, web page."),
    "train": ("gencompress.cli.train", "Train a zoo generator on the bundled digits and write its checkpoint."),
    "distill": ("gencompress.cli.distill", "Train a pruned student's weights to reproduce its float teacher."),
    "sweep": ("gencompress.cli.sweep", "Compress many models x configurations as resumable trials on Ray (local or a cluster)."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), name.replace("-", "_"))

    def format_commands(self, ctx, formatter):
        # Static help lines: listing the verbs must not import torch.
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, short) in COMMANDS.items()])

    def main(self, args=None, prog_name=None, **extra):
        previous = _terminate_like_interrupt()
        try:
            rv = super().main(args=args, prog_name=prog_name or "gencompress", standalone_mode=False, **extra)
        except GencompressError as e:
            _fail(str(e))
        except click.exceptions.Abort:
            click.echo("gencompress: aborted", err=True)
            sys.exit(130)
        except click.UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # bare `gencompress` (click >= 8.2): the help, not a one-line error
                click.echo(e.format_message(), err=True)
                sys.exit(2)
            _fail(e.format_message(), e.ctx.command_path if e.ctx is not None else "gencompress")
        except click.ClickException as e:
            _fail(e.format_message())
        except KeyboardInterrupt:
            click.echo("gencompress: interrupted", err=True)
            sys.exit(130)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        if isinstance(rv, int):
            sys.exit(rv)
        sys.exit(0)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _terminate_like_interrupt():
    """SIGTERM → KeyboardInterrupt, so every ``finally`` (temp files, staging folders, the memory
    probe's child process) runs exactly as for Ctrl-C; returns the handler it replaced."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None  # signal handlers can only be set from the main thread
    return signal.signal(signal.SIGTERM, _raise_interrupt)


def _fail(message: str, prefix: str = "gencompress") -> None:
    one_line = " ".join(message.split())
    click.echo(f"{prefix}: error: {one_line}", err=True)
    sys.exit(2)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gencompress")
def main():
    """Shrink trained generators (GANs, VAEs, recurrent VAEs) as ONNX graphs.

    \b
    Typical flow:
      gencompress export dcgan g.onnx
      gencompress quantize g.onnx g.int8.onnx
      gencompress check g.onnx g.int8.onnx
      gencompress compress dcgan out/        # all of the above, plus report.html
    """
