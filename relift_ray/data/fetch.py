"""``relift data fetch``: the evaluation benchmarks, downloaded once into one local folder,
each from a pinned source and verified.

Every benchmark of ``relift_ray.catalog`` (and the paper config's validation set) has a source:
a Hugging Face hub dataset or a file of a public GitHub repository (where the paper's exact set
is not on the hub), each read at a full commit, one file named by its path in the repository
(the hub download's ``allow_patterns``: nothing else is downloaded), with the rows it must
hold and, where known, its sha256. ``fetch``:

1. downloads the file at the pinned commit. A source whose commit is not known here is read
   at the repository's head once; the commit that resolved to and the file's sha256 go into
   ``manifest.json``, and later fetches read that commit and expect that hash (a lock file).
   ``--refresh`` fetches the head again and reports what changed;
2. checks the file's sha256 and row count, and stops, naming the source, when either differs:
   nothing is written then;
3. writes the set in the layout the evaluation job reads (``eval/math500/test.jsonl``, ...);
4. checks it as the grader does, through the reward worker (math-verify in a child process
   with a time limit per answer): every gold answer inside ``\\boxed{}`` verifies against
   itself, another question's gold does not;
5. records source, commit, rows, bytes, sha256 and the check in ``manifest.json``.

``eval.data_dir`` (or ``RELIFT_EVAL_DATA``) points the job at such a folder; without either,
the job reads ``../shared/data`` beside the checkout, else the default fetch folder,
``<relift cache>/benchmarks``.
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
from relift_ray.data.benchmarks import default_fetch_dir, load_benchmark
from relift_ray.data.readers import iter_rows, load_questions
from relift_ray.errors import DataError

HUB, GITHUB = "hf", "github"
RELIFT_REPO, RELIFT_HEAD = "TheRoadQaQ/ReLIFT", "eb95454f45eb84bf8f8efa3728f4839548426f5f"
LUFFY_REPO, LUFFY_HEAD = "ElliottYan/LUFFY", "01f4ae066249e6965ce0d5512ccdf99a12895c74"


@dataclass(frozen=True)
class Source:
    kind: str  # hf | github
    where: str  # hub dataset id, or the GitHub repository (owner/name)
    file: str  # the one file read, by its path in the repository
    revision: str = ""  # a full commit; "" = not known here: the first fetch's, kept
    # the rows it holds (of ``select``'s data_source in a bundle); 0 = not known here: the
    # first fetch's, kept
    rows: int = 0
    sha256: str = ""  # of the file; "" = not known here: the first fetch's, kept
    # hub sets: the layout's field -> the file's column; optional ones may be absent
    columns: dict = field(default_factory=dict)
    optional: tuple = ()
    select: str = ""  # bundles: the data_source whose rows are the set
    note: str = ""


GITHUB_FILE = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"
MATH_COLUMNS = {"problem": "problem", "answer": "answer"}

SOURCES: dict[str, Source] = {
    "math500": Source(HUB, "HuggingFaceH4/MATH-500", "test.jsonl",
                      "ff5b20257d8185524591543f8ff5993951537bb8", 500, columns=MATH_COLUMNS),
    "aime24": Source(HUB, "HuggingFaceH4/aime_2024", "data/train-00000-of-00001.parquet",
                     "2fe88a2f1091d5048c0f36abc874fb997b3dd99a", 30,
                     "26139847601a5037c237d5928b195e7260ca8074cf4f264b794af42847f79ccf",
                     columns=MATH_COLUMNS),
    "aime25": Source(HUB, "math-ai/aime25", "test.jsonl",
                     "563bb8404243c5f09de6ec262f2db674fe5bce9b", 30, columns=MATH_COLUMNS),
    "amc": Source(HUB, "AI-MO/aimo-validation-amc", "data/train-00000-of-00001.parquet", "",
                  83, columns=MATH_COLUMNS,
                  note="AMC 12 2022+2023, the 83 problems of ReLIFT/LUFFY's amc split"),
    "amc23": Source(HUB, "math-ai/amc23", "test.jsonl",
                    "80815d37005feb82cd7f8fbc6901d5d3eff43057", 40,
                    columns={"problem": "question", "answer": "answer"}),
    "minerva": Source(GITHUB, LUFFY_REPO, "data/valid.parquet", LUFFY_HEAD, 272,
                      "3acbd7f5872207c97aa3fe0d40662ec53f33bca19b438ee88a1ecf910051a723",
                      select="minerva", note=(
                          "the paper's Minerva numbers use LUFFY's extracted answers, which no "
                          "hub copy carries: LUFFY's data/valid.parquet (its minerva rows)")),
    "olympiadbench": Source(
        HUB, "Hothan/OlympiadBench",
        "OlympiadBench/OE_TO_maths_en_COMP/OE_TO_maths_en_COMP.parquet",
        "91184b52131e7fc9455fef848035173aea8cc01a", 674,
        columns={"question": "question", "final_answer": "final_answer", "context": "context",
                 "id": "id"}, optional=("context", "id"), note=(
            "674 problems: the paper's bundles have 675, one of which is no longer on the hub "
            "(the shared copy and ReLIFT's valid.parquet have all 675)")),
    "gsm8k": Source(HUB, "openai/gsm8k", "main/test-00000-of-00001.parquet",
                    "740312add88f781978c0658806c59bc2815b9866", 1319,
                    "ee7b8da9e381df27b9e3f7758a159ab2bdaa4dbaa910546cbbc47e0cb44e4f59",
                    columns={"question": "question", "answer": "answer"}),
    "relift_valid": Source(GITHUB, RELIFT_REPO, "dataset/valid.parquet", RELIFT_HEAD, 1987,
                           "e30b419198a894a1990742fac739960460e9a3de78fcf214730fe7ab20a92feb",
                           note="the paper configs' validation set (data.test), added to the "
                                "repository in f58c9bf and unchanged since"),
    # git blob 48cd2b38bf2690f5ebfda3695a23a188d472c6b6 (also LUFFY's data/valid.mmlu_pro.parquet);
    # its bytes were not at hand to hash, so the first fetch records its sha256 and rows
    "mmlu_pro": Source(GITHUB, RELIFT_REPO, "dataset/valid.mmlu_pro.parquet", RELIFT_HEAD,
                       note="the paper's out-of-distribution MMLU-Pro, as the released "
                            "evaluation reads it (valid.all.parquet holds the same rows)"),
}
LAYOUT = {"relift_valid": "eval/bundles/relift_valid.parquet"}  # beside the benchmarks'


def layout_path(name: str) -> str:
    return LAYOUT.get(name) or BENCHMARKS[name].path


# the two ways anything leaves this machine; tests replace them with stand-ins
def hub_snapshot(repo: str, revision: str, patterns: list[str]) -> Path:
    """The repository's files matching ``patterns`` at ``revision``, in the hub cache: the
    folder is ``.../snapshots/<the commit the revision resolved to>``."""
    from huggingface_hub import snapshot_download
    return Path(snapshot_download(repo, repo_type="dataset", revision=revision,
                                  allow_patterns=patterns))


def url_get(url: str, dest: Path) -> None:
    import urllib.request
    with urllib.request.urlopen(url, timeout=120) as r, open(dest, "wb") as f:
        shutil.copyfileobj(r, f)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_COMMIT = re.compile(r"[0-9a-f]{40}")


def _download(name: str, src: Source, revision: str, tmp: Path) -> tuple[Path, str]:
    """The source's file at ``revision`` and the commit it resolved to."""
    where = f"{src.where} (revision {revision})"
    if src.kind == GITHUB:
        url = GITHUB_FILE.format(repo=src.where, commit=revision, path=src.file)
        part = tmp / Path(src.file).name
        try:
            url_get(url, part)
        except Exception as e:
            raise DataError(f"benchmark {name}: could not download {url} "
                            f"({type(e).__name__}: {str(e)[:200]})") from None
        return part, revision
    try:
        root = hub_snapshot(src.where, revision, [src.file])
    except Exception as e:
        raise DataError(f"benchmark {name}: could not get {where} from the Hugging Face hub "
                        f"({type(e).__name__}: {str(e)[:200]})") from None
    path = root / src.file
    if not path.is_file():
        held = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        raise DataError(f"benchmark {name}: {where} has no file {src.file} "
                        f"(its cached snapshot holds: {', '.join(held[:8]) or 'nothing'})")
    return path, root.name if _COMMIT.fullmatch(root.name) else revision


def _hub_rows(name: str, src: Source, path: Path, revision: str) -> list[dict]:
    rows = [row for _, row in iter_rows(path)]
    for key, col in src.columns.items():
        if key not in src.optional and rows and col not in rows[0]:
            raise DataError(f"benchmark {name}: {src.where} (revision {revision}) file "
                            f"{src.file} has no column {col!r} (columns: "
                            f"{', '.join(sorted(rows[0]))})")
    return [{key: row[col] for key, col in src.columns.items() if col in row} for row in rows]


def _count(src: Source, path: Path) -> int:
    return sum(1 for _, row in iter_rows(path) if not src.select
               or row.get("data_source") == src.select)


def _write(rows: list[dict], dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.suffix == ".json":
        dest.write_text(json.dumps(rows, ensure_ascii=False))
    else:
        with dest.open("w") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")


def verify(name: str, folder: Path, score) -> dict:
    """The grader check on a fetched set: every gold inside \\boxed{} against itself, and (up
    to 60) others' golds against it. ``score``: [(response, truth)] -> [Reward], the reward
    worker's (relift_ray.jobs.data_fetch: math-verify in a child process with a time limit
    per answer, so that no gold answer can hang the fetch); an answer past the limit counts as
    neither verified nor rejected."""
    if name not in BENCHMARKS:  # the validation set: read as training data would be
        qs = load_questions(str(folder / layout_path(name)))
    else:
        qs = load_benchmark(name, folder)
    pairs = [(a, b) for a, b in zip(qs, qs[1:] + qs[:1]) if a.answer != b.answer][:60]
    own = score([(f"\\boxed{{{q.answer}}}", q.answer) for q in qs])
    others = score([(f"\\boxed{{{b.answer}}}", a.answer) for a, b in pairs])
    return {"questions": len(qs), "golds_verified": sum(r.value == 1.0 for r in own),
            "others_rejected": sum(r.value == 0.0 and not r.timed_out for r in others),
            "others_tried": len(pairs), "timeouts": sum(r.timed_out for r in own + others)}


def _pins(name: str, src: Source, prev: dict | None,
          refresh: bool) -> tuple[str, str, str, int]:
    """(revision to read, sha256 expected or "", where that expectation comes from, rows
    expected or 0)."""
    if src.kind == GITHUB and not src.revision:  # a branch would move under the lock
        raise DataError(f"benchmark {name}: a GitHub source needs a full commit "
                        f"(relift_ray/data/fetch.py)")
    kept = prev if prev and not refresh and prev.get("source", {}).get("where") == src.where \
        and prev["source"].get("file") == src.file else None
    if src.revision:
        revision = src.revision
    elif kept:
        revision = kept["source"]["revision"]
    else:
        revision = "main"
    same = kept is not None and kept["source"]["revision"] == revision
    rows = src.rows or (kept["rows"] if same else 0)
    if src.sha256:
        return revision, src.sha256, "pinned in relift_ray/data/fetch.py", rows
    if same:
        return revision, kept["sha256"], "recorded by the first fetch in manifest.json", rows
    return revision, "", "", rows


def fetch_one(name: str, root: Path, score, prev: dict | None = None, refresh: bool = False,
              log=print) -> dict:
    """One source into ``root``: download, the sha256 and row checks, the layout file, the
    grader check; returns its manifest entry. Nothing is written when a check fails."""
    src, dest = SOURCES[name], root / layout_path(name)
    revision, expected, whence, want_rows = _pins(name, src, prev, refresh)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        path, resolved = _download(name, src, revision, Path(tmp))
        at = f"{src.where}@{resolved[:12]}:{src.file}"
        digest = sha256_of(path)
        if expected and digest != expected:
            fix = ("`relift data fetch --refresh --benchmarks " + name + "` takes the new file"
                   if whence.startswith("recorded") else
                   "the file at that commit is not the one pinned (a corrupt download, or the "
                   "repository was rewritten)")
            raise DataError(f"benchmark {name}: {at} has sha256 {digest}, expected {expected} "
                            f"({whence}); nothing was written; {fix}")
        hub_rows = _hub_rows(name, src, path, resolved) if src.kind == HUB else None
        rows = len(hub_rows) if hub_rows is not None else _count(src, path)
        if want_rows and rows != want_rows:
            raise DataError(f"benchmark {name}: {at} holds {rows} rows"
                            f"{' of ' + src.select if src.select else ''}, expected {want_rows} "
                            f"({'relift_ray/data/fetch.py' if src.rows else 'manifest.json'}); "
                            f"nothing was written")
        staged = Path(tmp) / "staged"  # the set in its layout, checked before it is moved in
        part = staged / layout_path(name)
        part.parent.mkdir(parents=True)
        if src.kind == HUB:
            _write(hub_rows, part)
        else:
            shutil.copy(path, part)
        check = verify(name, staged, score)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(part), dest)
    entry = {"file": layout_path(name),
             "source": {**asdict(src), "revision": resolved, "pinned": bool(src.revision)},
             "rows": rows, "questions": check["questions"], "bytes": dest.stat().st_size,
             "sha256": digest, "file_sha256": sha256_of(dest), "check": check,
             "fetched": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if prev and refresh:
        log(f"[fetch] {name}: {_changes(prev, entry)}")
    log(f"[fetch] {name}: {rows} rows, {check['questions']} questions from {at} "
        f"({time.time() - t0:.1f}s); sha256 {digest[:12]} "
        f"{'matches' if expected else 'recorded (no pin known here)'}; golds verified "
        f"{check['golds_verified']}/{check['questions']}, others' golds rejected "
        f"{check['others_rejected']}/{check['others_tried']}"
        + (f", {check['timeouts']} past the time limit" if check["timeouts"] else ""))
    return entry


def _changes(prev: dict, new: dict) -> str:
    diffs = [f"{label} {a} -> {b}" for label, a, b in (
        ("revision", prev["source"].get("revision"), new["source"]["revision"]),
        ("sha256", prev.get("sha256", "")[:12], new["sha256"][:12]),
        ("rows", prev.get("rows"), new["rows"])) if a != b]
    return "changed since the last fetch: " + ", ".join(diffs) if diffs else \
        "unchanged since the last fetch"


def fetch(score, names: list[str] | None = None, to: str | Path = "", log=print,
          refresh: bool = False) -> dict:
    """Download ``names`` (default: every source) into ``to`` (default: the relift cache's
    benchmarks folder), verify each (the gold check through ``score``, see ``verify``), and
    write the manifest after each; returns it. ``relift_ray.jobs.data_fetch.fetch_checked``
    calls it with the reward worker."""
    root = Path(to) if to else default_fetch_dir()
    names = list(names or SOURCES)
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise DataError(f"relift data fetch: unknown benchmark {unknown[0]!r} "
                        f"(known: {', '.join(SOURCES)})")
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    for name in names:
        manifest[name] = fetch_one(name, root, score, manifest.get(name), refresh, log)
        root.mkdir(parents=True, exist_ok=True)  # after each set: never ahead of the files
        manifest_path.write_text(json.dumps(manifest, indent=1))
    root.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest, indent=1))
    manifest = json.loads(manifest_path.read_text())  # as the file holds it
    log(f"[fetch] {len(names)} set(s) in {root} (manifest.json); point eval.data_dir or "
        f"RELIFT_EVAL_DATA there, or leave both unset to use it by default")
    return manifest
