"""`edgemill run PKG -i NAME=FILE.npy ...`"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..errors import FileNotFound, OptionError
from ..tensors import dtype_name
from .output import emit_json, info


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("run", parents=[common], help="run a package once on inputs from .npy/.npz files",
                       description="Run a package once. Inputs: -i NAME=FILE.npy per input, or -i FILE.npz holding "
                                   "one array per input name; --random makes random inputs.")
    p.add_argument("package")
    p.add_argument("-i", "--input", action="append", default=[], metavar="NAME=FILE.npy|FILE.npz|NAME=PHOTO.jpg",
                   help="an input from a .npy (or all from a .npz); an input that takes camera frames also takes a "
                        "JPEG/PNG file")
    p.add_argument("--random", action="store_true", help="run on random inputs of the model's shapes")
    p.add_argument("-o", "--output", help="save the outputs to this .npz")
    p.add_argument("--trusted-key", action="append", metavar="PUB", help="verify the signature with this key")
    p.add_argument("--threads", type=int, help="intra-op threads")
    p.set_defaults(handler=run)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def _load_array_file(path: Path) -> dict[str, np.ndarray] | np.ndarray | bytes:
    if not path.is_file():
        raise FileNotFound("input file not found", value=str(path), fix="check the path")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return path.read_bytes()  # an encoded image, for an input that takes camera frames (decoded by the runtime)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        hint = ", string arrays as np.asarray(x, dtype=str)" if "allow_pickle" in str(exc) else ""
        raise OptionError("cannot read the input file", value=str(path),
                          fix=f"save arrays with numpy.save (.npy) or numpy.savez (.npz){hint} ({exc})") from None


def read_inputs(specs: list[str]) -> dict[str, np.ndarray | bytes]:
    feed: dict[str, np.ndarray | bytes] = {}
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep:
            loaded = _load_array_file(Path(spec))
            if not isinstance(loaded, dict):  # a .npy or an image
                raise OptionError("a .npy or image input needs a name", value=spec, fix="write -i NAME=FILE.npy")
            feed.update(loaded)
        else:
            loaded = _load_array_file(Path(file))
            if isinstance(loaded, dict):
                raise OptionError("NAME=FILE takes a .npy file", value=spec, fix="write -i FILE.npz without a name")
            feed[name] = loaded
    return feed


def run(args: argparse.Namespace) -> int:
    from ..runtime import load
    from ..runtime.benchmark import random_inputs

    model = load(args.package, trusted_keys=args.trusted_key, threads=args.threads)
    if args.random:
        feed = random_inputs(model.inputs)
    elif args.input:
        feed = read_inputs(args.input)
        for name, value in feed.items():
            if isinstance(value, bytes) and name not in model.image_inputs:
                spec = next((str(s) for s in model.inputs if s.name == name), None)
                raise OptionError(f"input {name!r} does not take image files", value=name,
                                  expected=f"an array: {spec}" if spec else None,
                                  fix="pass a .npy, or compile the package with --preprocess so that it takes camera frames")
    else:
        raise OptionError("no inputs given", expected=", ".join(str(s) for s in model.inputs),
                          fix="pass -i NAME=FILE.npy for each input, -i FILE.npz, or --random")
    outputs = model.run(feed)
    if args.output:
        # Object (string) arrays would be pickled, which np.load refuses by default: store them as unicode.
        np.savez(args.output, **{k: v.astype(str) if v.dtype == object else v  # type: ignore[arg-type]
                                 for k, v in outputs.items()})
        if not args.json:
            info(f"saved outputs to {args.output}")
    if args.json:
        emit_json({"package_id": model.package_id, "outputs": {
            k: {"dtype": dtype_name(v.dtype), "shape": list(v.shape), "values": v.tolist()} for k, v in outputs.items()}})
        return 0
    with np.printoptions(precision=5, threshold=20, edgeitems=4, suppress=True):
        for name, value in outputs.items():
            print(f"{name}: {dtype_name(value.dtype)}{list(value.shape)}")  # text is "str", not "object"
            print(f"  {value}".replace("\n", "\n  "))
    return 0
