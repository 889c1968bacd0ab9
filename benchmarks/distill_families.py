"""Distillation on the generator families users bring (models/families.py, models/conv_families.py),
not only the zoo: ``benchmarks/distill.py --families`` runs this.

Per family and prune setting (channel 50%, unstructured 50%): prune the float export, distill the
pruned student against it for ``--steps`` steps, and report the raw and distilled PSNR (against
float in onnxruntime on held-back inputs: seeded latents, or natural-image crops for image inputs,
as ``gencompress.inputs`` draws them), the distill wall time and the load average around the row.
A prune that finds nothing to remove is said so (no row to distill).

    python benchmarks/distill_families.py [--families unet,rrdb] [--settings ch50,u50] [--steps 2000] [--batch N] [--lr X]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {"ch50": {"sparsity": 0.5, "mode": "channel"}, "u50": {"sparsity": 0.5, "mode": "unstructured"}}


def export_family(name: str, out: Path) -> None:
    """A family by name: ``models/families.py`` (its class's output_range recorded, as the zoo's are) or
    ``conv:NAME`` from ``models/conv_families.py`` at its test size."""
    from gencompress.exporter.export import export
    from gencompress.exporter.families import export_family as export_conv_family
    from gencompress.inputs import METADATA_OUTPUT_RANGE
    from gencompress.models import conv_families
    from gencompress.models.families import FAMILIES
    from gencompress.onnx_io import load_model, save_model

    if name.startswith("conv:"):
        export_conv_family(name[5:], out, legacy=True, **conv_families.TINY[name[5:]])
        return
    cls = FAMILIES[name][0]
    kwargs = {"batch_size": cls.gencompress_batch_size} if getattr(cls, "gencompress_batch_size", None) else {}
    export(f"gencompress.models.families:{cls.__name__}", out, **kwargs)
    if getattr(cls, "output_range", None):  # the exporter records ranges of zoo models only: image inputs take the output's range
        proto = load_model(out)
        proto.metadata_props.add(key=METADATA_OUTPUT_RANGE, value=repr(float(cls.output_range)))
        save_model(proto, out)


def all_families() -> list[str]:
    from gencompress.models import conv_families
    from gencompress.models.families import FAMILIES

    return [*FAMILIES, *(f"conv:{n}" for n in conv_families.FAMILIES)]


def main(argv=None) -> int:
    import gencompress
    from gencompress.errors import GencompressError
    from gencompress.verbs.distill import DEFAULTS
    from gencompress.inputs import specs_of_model
    from gencompress.onnx_io import load_model
    from gencompress.output import table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(all_families()))
    parser.add_argument("--settings", default="ch50,u50")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=None, help="inputs per step (default: distill's)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: distill's choice)")
    args = parser.parse_args(argv)
    args.batch = args.batch or DEFAULTS["batch"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="gencompress-distill-families-") as tmp:
        tmp = Path(tmp)
        for name in args.families.split(","):
            src = tmp / f"{name.replace(':', '_')}.onnx"
            export_family(name, src)
            proto = load_model(src)
            inputs = "; ".join(f"{s.name}: {s.describe_prior()}" for s in specs_of_model(proto))
            batch = proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value or args.batch  # fixed-batch exports
            for setting in args.settings.split(","):
                load0 = os.getloadavg()[0]
                student = tmp / f"{src.stem}.{setting}.onnx"
                try:
                    gencompress.prune(src, student, **SETTINGS[setting])
                except GencompressError as e:
                    rows.append((name, setting, "-", "-", "-", "-", f"{load0:.2f}", f"prune: {e}"))
                    print(" | ".join(rows[-1]), flush=True)
                    continue
                start = time.perf_counter()
                try:
                    r = gencompress.distill(src, student, tmp / f"{src.stem}.{setting}.d.onnx", steps=args.steps, batch=batch, lr=args.lr)
                except GencompressError as e:
                    rows.append((name, setting, "-", "-", "-", "-", f"{load0:.2f}", f"distill: {e}"))
                    print(" | ".join(rows[-1]), flush=True)
                    continue
                wall = time.perf_counter() - start
                gain = r["psnr_after_db"] - r["psnr_before_db"] if r["steps"] else 0.0
                rows.append((name, setting, f"{r['psnr_before_db']:.2f}", f"{r['psnr_after_db']:.2f}", f"{gain:+.2f}", f"{wall:.0f}",
                             f"{load0:.2f}/{os.getloadavg()[0]:.2f}", inputs))
                print(" | ".join(rows[-1]), flush=True)
    print()
    print(table(["family", "setting", "raw dB", "distilled dB", "gain dB", "wall s", "load 1-min", "inputs"], rows))
    print(f"\n{args.steps} steps, batch {args.batch} (or the export's fixed batch); PSNR against float on held-back inputs; "
          "load average before/after each row (shared machine: seconds grow with it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
