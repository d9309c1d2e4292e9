"""The demo model committed with the repository (``sdpo/toy/demo_model/``): the model ``make run`` serves on a
fresh clone, with no build (``sdpo.models.default_model_path``).

It is a toy-world checkpoint trained by ``sdpo make-toy-model`` (the recipe is recorded in
``demo_model.json``, the training log in ``toy_training.json``) and exported by ``export_demo_model``: the
weights in float16 (half the bytes; every loader of the project reads them into float32 on CPU), the
tokenizer and the toy metadata copied, and the sha256 of every file written to ``demo_model.json``, which a
test checks the committed files against.

Training is deterministic on one machine but not across CPU kinds, so rebuilding the recipe elsewhere gives
other weights (and other solve rates); the committed files are the measured ones (docs/toyworld.md, "The demo
model").

    python -m sdpo.toy.demo SRC [--out sdpo/toy/demo_model] --recipe "sdpo make-toy-model ..."
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch

DEMO_DIR = Path(__file__).resolve().parent / "demo_model"
MANIFEST = "demo_model.json"
# copied as they are from the make-toy-model checkpoint (those present)
COPIED = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
          "sdpo_model.json", "toy_training.json", "toy_eval.json")


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_hashes(folder: str | Path) -> dict[str, str]:
    """sha256 of every file of ``folder`` but the manifest, by name."""
    folder = Path(folder)
    return {p.name: sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}


def read_manifest(folder: str | Path = DEMO_DIR) -> dict[str, Any]:
    return json.loads((Path(folder) / MANIFEST).read_text())


def mismatches(folder: str | Path = DEMO_DIR) -> list[str]:
    """What differs between ``folder``'s files and the sha256 recorded in its manifest (empty: all match)."""
    recorded = read_manifest(folder)["sha256"]
    actual = file_hashes(folder)
    out = [f"{name}: missing" for name in recorded if name not in actual]
    out += [f"{name}: not in the manifest" for name in actual if name not in recorded]
    out += [f"{name}: sha256 {actual[name][:16]}, recorded {recorded[name][:16]}" for name in recorded
            if name in actual and actual[name] != recorded[name]]
    return out


def export_demo_model(src: str | Path, out: str | Path = DEMO_DIR, *, recipe: str,
                      notes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the checkpoint at ``src`` (a ``sdpo make-toy-model`` output) to ``out`` with float16 weights and
    the manifest (recipe, the float32 source's sha256, every file's sha256); return the manifest."""
    from transformers import AutoModelForCausalLM

    src, out = Path(src), Path(out)
    if not (src / "toy_training.json").is_file():
        raise ValueError(f"src: {src} is not a make-toy-model checkpoint (no toy_training.json)")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32, local_files_only=True)
    model.to(torch.float16).save_pretrained(out)
    for name in COPIED:
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
    manifest = {"recipe": recipe, "stored_dtype": "float16",
                "source_model_sha256": sha256(src / "model.safetensors"), **(notes or {}),
                "sha256": file_hashes(out)}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - a maintainer's tool
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src")
    ap.add_argument("--out", default=str(DEMO_DIR))
    ap.add_argument("--recipe", required=True, help="The make-toy-model command that built SRC.")
    args = ap.parse_args(argv)
    manifest = export_demo_model(args.src, args.out, recipe=args.recipe)
    print(json.dumps(manifest, indent=1))


if __name__ == "__main__":  # pragma: no cover
    main()
