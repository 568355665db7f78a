"""Malformed CSV rows in every CSV reader: wrong column count, bad ids, byte-order mark, quoted
fields, CRLF line ends. A BOM, quotes and CRLF are valid CSV and parse to the same values as the
plain file; every other case is an error naming ``file:line``."""

import pytest

from lmr_jax.data import geo
from lmr_jax.data.lists import LabelTable, LabelTableError
from lmr_jax.datasets.gldv2 import csv_files
from lmr_jax.retrieval import submission

ID1, ID2 = "0123456789abcdef", "fedcba9876543210"

# reader name -> (read function, error class, valid text, {case: (text, line named or None)})
READERS = {
    "gldv2 train.csv": (
        csv_files.read_train_csv, csv_files.GldFormatError,
        f"id,url,landmark_id\n{ID1},http://a,7\n{ID2},http://b,9\n",
        {"wrong column count": (f"id,url,landmark_id\n{ID1},http://a,7\n{ID2},9\n", 3),
         "bad id": (f"id,url,landmark_id\n{ID1},http://a,7\nnot/an-id,http://b,9\n", 3),
         "bad landmark id": (f"id,url,landmark_id\n{ID1},http://a,seven\n", 2),
         "duplicate id": (f"id,url,landmark_id\n{ID1},http://a,7\n{ID1},http://b,9\n", 3),
         "unclosed quote": (f'id,url,landmark_id\n{ID1},"http://a,7\n{ID2},http://b,9\n', None)}),
    "gldv2 solution": (
        csv_files.read_retrieval_solution, csv_files.GldFormatError,
        f"id,images,Usage\n{ID1},{ID2},Public\n",
        {"wrong column count": (f"id,images,Usage\n{ID1},{ID2}\n", 2),
         "bad id": (f"id,images,Usage\n{ID1}!,{ID2},Public\n", 2),
         "bad usage": (f"id,images,Usage\n{ID1},{ID2},Secret\n", 2)}),
    "submission solution": (
        submission.read_retrieval_solution, submission.SubmissionError,
        f"id,images,Usage\n{ID1},{ID2},Public\n",
        {"wrong column count": (f"id,images,Usage\n{ID1},{ID2},Public,extra\n", 2),
         "bad usage": (f"id,images,Usage\n{ID1},{ID2},Secret\n", 2),
         "no ground truth": (f"id,images,Usage\n{ID1},,Private\n", 2)}),
    "submission": (
        submission.read_retrieval_submission, submission.SubmissionError,
        f"id,images\n{ID1},{ID2} {ID1}\n",
        {"wrong column count": (f"id,images\n{ID1},{ID2},{ID1}\n", 2),
         "empty id": (f"id,images\n,{ID2}\n", 2),
         "query twice": (f"id,images\n{ID1},{ID2}\n{ID1},{ID2}\n", 3)}),
    "label table": (
        LabelTable.load, LabelTableError,
        "label,landmark_id,country\n0,7,FR\n1,9,\n",
        {"wrong column count": ("label,landmark_id,country\n0,7,FR,extra\n", 2),
         "too few columns": ("label,landmark_id,country\n0,7\n", 2),
         "bad label": ("label,landmark_id,country\nzero,7,FR\n", 2),
         "out of order": ("label,landmark_id,country\n1,7,FR\n", 2)}),
    "country csv": (
        geo.load_country_csv, geo.CountryFileError,
        "landmark_id,country\n7,FR\n9,jp\n",
        {"wrong column count": ("landmark_id,country\n7,FR,x\n", 2),
         "bad landmark id": ("landmark_id,country\n7,FR\nnine,JP\n", 3),
         "bad country": ("landmark_id,country\n7,France\n", 2)}),
}


def _write(tmp_path, text, *, bom=False, crlf=False):
    if crlf:
        text = text.replace("\n", "\r\n")
    path = tmp_path / "file.csv"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def _quoted(text):
    """Every field of every row quoted (valid CSV, same values)."""
    return "".join(",".join(f'"{f}"' for f in line.split(",")) + "\n"
                   for line in text.splitlines())


def _same(a, b):
    import numpy as np

    if isinstance(a, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    if hasattr(a, "__dataclass_fields__"):
        return all(_same(getattr(a, k), getattr(b, k)) for k in a.__dataclass_fields__)
    return a == b


@pytest.mark.parametrize("variant", ["bom", "crlf", "quoted", "bom+crlf+quoted"])
@pytest.mark.parametrize("reader", sorted(READERS))
def test_valid_variants_parse_like_the_plain_file(tmp_path, reader, variant):
    read, _, text, _ = READERS[reader]
    want = read(_write(tmp_path, text))
    (tmp_path / "v").mkdir()
    got = read(_write(tmp_path / "v", _quoted(text) if "quoted" in variant else text,
                      bom="bom" in variant, crlf="crlf" in variant))
    assert _same(got, want)


CASES = [(r, c) for r in sorted(READERS) for c in sorted(READERS[r][3])]


@pytest.mark.parametrize(("reader", "case"), CASES)
def test_malformed_rows_are_errors_naming_file_and_line(tmp_path, reader, case):
    read, error, _, cases = READERS[reader]
    text, line = cases[case]
    path = _write(tmp_path, text)
    with pytest.raises(error) as info:
        read(path)
    assert str(path) in str(info.value)
    if line is not None:
        assert f"{path}:{line}:" in str(info.value)
