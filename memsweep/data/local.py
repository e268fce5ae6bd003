"""Corpora from the user's own text: `corpus=path` (.txt, .jsonl and .parquet files) and
`corpus=hf` (a Hugging Face dataset saved to disk or from the hub), as lists of documents."""

from __future__ import annotations

import glob
import json
from pathlib import Path

from memsweep.config import ConfigError, DataConfig

PATH_SUFFIXES = (".txt", ".jsonl", ".parquet")


def path_files(pattern: str) -> list[Path]:
    """The files `data.path` names: a file, every .txt/.jsonl/.parquet under a directory, or a glob."""
    path = Path(pattern).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in PATH_SUFFIXES)
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not files:
        raise ConfigError(f"data.path: no {'/'.join(PATH_SUFFIXES)} file matches {pattern}")
    unknown = [str(p) for p in files if p.suffix not in PATH_SUFFIXES]
    if unknown:
        raise ConfigError(f"data.path: {unknown[0]} is not a {'/'.join(PATH_SUFFIXES)} file")
    return files


def read_text_file(path: Path, text_field: str) -> list[str]:
    """.txt: the file is one document; .jsonl: one per line; .parquet: one per row of `text_field`."""
    if path.suffix == ".txt":
        return [path.read_text(encoding="utf-8")]
    if path.suffix == ".jsonl":
        values = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path} line {number} is not JSON: {err}") from None
                if not isinstance(record, dict) or text_field not in record:
                    raise ConfigError(f"data.text_field: {path} line {number} has no field {text_field!r}")
                values.append(record[text_field])
    else:
        import pyarrow.parquet as pq

        columns = pq.read_schema(path).names
        if text_field not in columns:
            raise ConfigError(f"data.text_field: {path} has no column {text_field!r} (its columns: {', '.join(columns)})")
        values = pq.read_table(path, columns=[text_field]).column(text_field).to_pylist()
    return _strings(values, f"{path} field {text_field!r}")


def _strings(values: list, where: str) -> list[str]:
    wrong = next((v for v in values if v is not None and not isinstance(v, str)), None)
    if wrong is not None:
        raise ConfigError(f"data.text_field: {where} holds {type(wrong).__name__} values, not text")
    return [v for v in values if v is not None]


def read_hf_dataset(data: DataConfig) -> list[str]:
    """A dataset written by `save_to_disk` (hf_name is a directory), else one from the hub."""
    import datasets

    if Path(data.hf_name).is_dir():
        dataset = datasets.load_from_disk(data.hf_name)
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset[data.hf_split]
    else:
        dataset = datasets.load_dataset(data.hf_name, data.hf_config, split=data.hf_split, revision=data.hf_revision)
    if data.text_field not in dataset.column_names:
        raise ConfigError(f"data.text_field: dataset {data.hf_name} has no column {data.text_field!r} "
                          f"(its columns: {', '.join(dataset.column_names)})")
    if data.max_documents is not None:
        dataset = dataset.select(range(min(len(dataset), data.max_documents)))
    return _strings(list(dataset[data.text_field]), f"dataset {data.hf_name} column {data.text_field!r}")
