"""``relift data fetch``: the evaluation benchmarks, downloaded once into one local folder.

Every benchmark of ``relift_ray.catalog`` (and the paper config's validation set) has a
default source: a Hugging Face hub dataset (id, revision, config, split, the columns read) read
through the hub's own cache, or, where the paper's exact set is not on the hub, a file of a
public repository at a pinned commit. ``fetch`` writes each set into the folder layout the
evaluation job reads (``eval/math500/test.jsonl``, ...; the README lists it), checks it as the
grader test does (every gold answer verifies against itself inside ``\\boxed{}``, another
question's gold does not), and writes ``manifest.json`` (source, revision, rows, bytes,
sha256, the check). ``eval.data_dir`` (or ``RELIFT_EVAL_DATA``) points the job at such a
folder; without either, the job reads ``../shared/data`` beside the checkout, else the default
fetch folder, ``<relift cache>/benchmarks``.

The hub column names were written from the datasets' cards without network access here; a set
whose columns differ stops with its id, revision and the missing column.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from relift_ray.catalog import BENCHMARKS
from relift_ray.core.scoring import math_reward
from relift_ray.data.benchmarks import default_fetch_dir, load_benchmark
from relift_ray.data.readers import iter_rows, load_questions
from relift_ray.errors import DataError

HUB, URL = "hf", "url"


@dataclass(frozen=True)
class Source:
    kind: str  # hf | url
    where: str  # dataset id, or the file's URL
    split: str = "test"
    config: str = ""
    revision: str = "main"
    # the layout's field -> the hub dataset's column (hf sources); optional ones may be absent
    columns: dict = field(default_factory=dict)
    optional: tuple = ()
    note: str = ""


REPO_FILE = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"
LUFFY_VALID = REPO_FILE.format(repo="ElliottYan/LUFFY", commit="main", path="data/valid.parquet")
RELIFT_VALID = REPO_FILE.format(repo="TheRoadQaQ/ReLIFT",
                                commit="e9bd539bf0a7e616ad10410f15458eb75843c610",
                                path="dataset/valid.parquet")

SOURCES: dict[str, Source] = {
    "math500": Source(HUB, "HuggingFaceH4/MATH-500", "test",
                      columns={"problem": "problem", "answer": "answer"}),
    "aime24": Source(HUB, "HuggingFaceH4/aime_2024", "train",
                     columns={"problem": "problem", "answer": "answer"}),
    "aime25": Source(HUB, "math-ai/aime25", "test",
                     columns={"problem": "problem", "answer": "answer"}),
    "amc": Source(HUB, "AI-MO/aimo-validation-amc", "train",
                  columns={"problem": "problem", "answer": "answer"},
                  note="AMC 12 2022+2023, the 83 problems of ReLIFT/LUFFY's amc split"),
    "amc23": Source(HUB, "math-ai/amc23", "test",
                    columns={"problem": "question", "answer": "answer"}),
    "minerva": Source(URL, LUFFY_VALID, note=(
        "the paper's Minerva numbers use LUFFY's extracted answers, which no hub copy "
        "carries: LUFFY's data/valid.parquet (its data_source=minerva rows)")),
    "olympiadbench": Source(HUB, "Hothan/OlympiadBench", "train", "OE_TO_maths_en_COMP",
                            columns={"question": "question", "final_answer": "final_answer",
                                     "context": "context", "id": "id"},
                            optional=("context", "id")),
    "gsm8k": Source(HUB, "openai/gsm8k", "test", "main",
                    columns={"question": "question", "answer": "answer"}),
    "relift_valid": Source(URL, RELIFT_VALID, note=(
        "the paper config's validation set (data.test): ReLIFT's dataset/valid.parquet")),
}
LAYOUT = {"relift_valid": "eval/bundles/relift_valid.parquet"}  # beside the benchmarks'


def layout_path(name: str) -> str:
    return LAYOUT.get(name) or BENCHMARKS[name].path


# the two ways anything leaves this machine; tests replace them with stand-ins
def hub_snapshot(repo: str, revision: str) -> Path:
    from huggingface_hub import snapshot_download
    return Path(snapshot_download(repo, repo_type="dataset", revision=revision,
                                  allow_patterns=["*.parquet", "*.jsonl", "*.json"]))


def url_get(url: str, dest: Path) -> None:
    import urllib.request
    with urllib.request.urlopen(url, timeout=120) as r, open(dest, "wb") as f:
        shutil.copyfileobj(r, f)


def _hub_rows(name: str, src: Source) -> list[dict]:
    where = f"{src.where} (revision {src.revision})"
    try:
        root = hub_snapshot(src.where, src.revision)
    except Exception as e:
        raise DataError(f"benchmark {name}: could not get {where} from the Hugging Face hub "
                        f"({type(e).__name__}: {str(e)[:200]})") from None
    files = sorted(p for p in root.rglob("*") if p.is_file()
                   and p.suffix in (".parquet", ".jsonl", ".json"))
    rel = [(p, p.relative_to(root).as_posix()) for p in files]
    if src.config:
        rel = [(p, r) for p, r in rel if src.config in r.split("/")]
        if not rel:
            raise DataError(f"benchmark {name}: {where} has no data files of config "
                            f"{src.config!r}")

    def is_split(r: str) -> bool:  # test.jsonl, test-00000-of-00001.parquet, test/...
        parts = r.split("/")
        name_tokens = re.split(r"[^A-Za-z0-9]+", Path(parts[-1]).stem)
        return src.split in parts[:-1] or name_tokens[0] == src.split
    chosen = [p for p, r in rel if is_split(r)]
    kinds = {p.suffix for p in chosen}
    if len(kinds) > 1:  # one copy of the split: parquet before jsonl before json
        keep = next(k for k in (".parquet", ".jsonl", ".json") if k in kinds)
        chosen = [p for p in chosen if p.suffix == keep]
    if not chosen:
        raise DataError(f"benchmark {name}: {where} has no data file of split "
                        f"{src.split!r}{' in config ' + src.config if src.config else ''} "
                        f"(files: {', '.join(r for _, r in rel[:8]) or 'none'})")
    rows = [row for p in chosen for _, row in iter_rows(p)]
    for key, col in src.columns.items():
        if key not in src.optional and rows and col not in rows[0]:
            raise DataError(f"benchmark {name}: {where} split {src.split!r} has no column "
                            f"{col!r} (columns: {', '.join(sorted(rows[0]))})")
    return [{key: row[col] for key, col in src.columns.items() if col in row} for row in rows]


def _write(name: str, rows: list[dict], dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.suffix == ".json":
        dest.write_text(json.dumps(rows, ensure_ascii=False))
    else:
        with dest.open("w") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")


def verify(name: str, folder: Path) -> dict:
    """The grader check on a fetched set: every gold against itself, and (up to 60) others'."""
    if name not in BENCHMARKS:  # the validation set: read as training data would be
        qs = load_questions(str(folder / layout_path(name)))
    else:
        qs = load_benchmark(name, folder)

    def reward(response, truth):
        return math_reward(response, truth, "boxed", exact_match=False)[0]
    own = sum(reward(f"\\boxed{{{q.answer}}}", q.answer) == 1.0 for q in qs)
    pairs = [(a, b) for a, b in zip(qs, qs[1:] + qs[:1]) if a.answer != b.answer][:60]
    rejected = sum(reward(f"\\boxed{{{b.answer}}}", a.answer) == 0.0 for a, b in pairs)
    return {"questions": len(qs), "golds_verified": own, "others_rejected": rejected,
            "others_tried": len(pairs)}


def fetch(names: list[str] | None = None, to: str | Path = "", log=print) -> dict:
    """Download ``names`` (default: every source) into ``to`` (default: the relift cache's
    benchmarks folder), check each, and write the manifest; returns it."""
    root = Path(to) if to else default_fetch_dir()
    names = list(names or SOURCES)
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise DataError(f"relift data fetch: unknown benchmark {unknown[0]!r} "
                        f"(known: {', '.join(SOURCES)})")
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    for name in names:
        src, dest = SOURCES[name], root / layout_path(name)
        t0 = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            part = Path(tmp) / dest.name
            if src.kind == URL:
                try:
                    url_get(src.where, part)
                except Exception as e:
                    raise DataError(f"benchmark {name}: could not download {src.where} "
                                    f"({type(e).__name__}: {str(e)[:200]})") from None
            else:
                _write(name, _hub_rows(name, src), part)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(part), dest)
        check = verify(name, root)
        data = dest.read_bytes()
        manifest[name] = {"file": layout_path(name), "source": asdict(src),
                          "rows": check["questions"], "bytes": len(data),
                          "sha256": hashlib.sha256(data).hexdigest(), "check": check,
                          "fetched": time.strftime("%Y-%m-%dT%H:%M:%S")}
        root.mkdir(parents=True, exist_ok=True)  # after each set: never ahead of the files
        manifest_path.write_text(json.dumps(manifest, indent=1))
        log(f"[fetch] {name}: {check['questions']} questions, {len(data) / 1e3:.0f} kB from "
            f"{src.where}{'@' + src.revision if src.kind == HUB else ''} "
            f"({time.time() - t0:.1f}s); golds verified {check['golds_verified']}/"
            f"{check['questions']}, others' golds rejected {check['others_rejected']}/"
            f"{check['others_tried']}")
    root.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest, indent=1))
    manifest = json.loads(manifest_path.read_text())  # as the file holds it
    log(f"[fetch] {len(names)} set(s) in {root} (manifest.json); point eval.data_dir or "
        f"RELIFT_EVAL_DATA there, or leave both unset to use it by default")
    return manifest


def data_main(argv: list[str]) -> int:
    import argparse
    import sys
    p = argparse.ArgumentParser(prog="relift data", description=(
        "relift data fetch: download the evaluation benchmarks once into one local folder."))
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download, check and list the benchmarks")
    f.add_argument("--benchmarks", default="", help=f"comma-separated (default: all of "
                   f"{', '.join(SOURCES)})")
    f.add_argument("--to", default="", help=f"folder (default: {default_fetch_dir()})")
    args = p.parse_args(argv)
    try:
        fetch([b for b in args.benchmarks.split(",") if b] or None, args.to)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
