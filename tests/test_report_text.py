"""The report draws captions as plain text, and a pair it cannot show is named."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)
import pytest
from PIL import Image

from factory import schema as S
from factory.io import files
from factory.report import ReportError, candidate_scores, contact_sheet_png, generators_png, histograms_png, sheet_rows

GENERATORS = ["sdxl", "my$^^gen$"]  # a generator's name is drawn as it is, too
CAPTIONS = ["Growth of $x^^2$ in a chart", "A price of $5 and $6", r"\frac{a}{b} $\unknown$", "$x_$ at the end"]


def write_candidates(path, captions: list[str], image: bytes | None = None) -> list[str]:
    if image is None:
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
        image = buf.getvalue()
    n = len(captions)
    scores = pa.array(np.linspace(0.3, 0.6, n), pa.float64())
    table = pa.table({S.ID: [f"id{i}" for i in range(n)], S.CAPTION: captions, S.SAMPLE: pa.array([0] * n, pa.int32()),
                      S.GENERATOR: [GENERATORS[i % 2] for i in range(n)], S.SEED: pa.array([0] * n, pa.int64()), S.IMAGE: [image] * n, S.WIDTH: pa.array([8] * n, pa.int32()),
                      S.HEIGHT: pa.array([8] * n, pa.int32()), S.CLIP_SCORE: scores, S.SSIM: scores, S.SCORE: scores,
                      S.REASON: pa.array([None] * n, pa.string())}, schema=S.CANDIDATES)
    files.write_parquet_atomic(str(path / "part-1.parquet"), table)
    return files.list_files(str(path), ".parquet")


def test_captions_with_dollar_signs_are_drawn_as_they_are(tmp_path):
    """matplotlib would parse `$x^^2$` as mathtext and fail (its own parser is the reference)."""
    from matplotlib import mathtext

    for text in ("$x^^2$", GENERATORS[1][2:]):
        with pytest.raises(ValueError):
            mathtext.MathTextParser("agg").parse(text)
    paths = write_candidates(tmp_path, CAPTIONS)
    cands = candidate_scores(paths)
    top, bottom = sheet_rows(cands)
    first = top.to_pylist()[0]
    ranks = {(first[S.ID], first[S.SAMPLE], first[S.GENERATOR]): 1}  # the contact sheet's generator labels and tags
    chosen = cands.filter(pa.compute.equal(cands.column(S.ID), first[S.ID]))
    draws = (contact_sheet_png, generators_png, histograms_png)
    assert all(getattr(d, "__wrapped__", None) for d in draws)  # every picture is drawn through plain_text
    for png in (contact_sheet_png(paths, top, bottom, ranks), generators_png(cands, chosen), histograms_png(cands, chosen)):
        with Image.open(io.BytesIO(png)) as im:
            assert im.format == "PNG" and im.width > 500


def test_a_pair_that_cannot_be_shown_names_its_row(tmp_path):
    paths = write_candidates(tmp_path, ["A red car on a quiet street."], image=b"not an image")
    top, bottom = sheet_rows(candidate_scores(paths))
    with pytest.raises(ReportError, match=r"the image at row 0 of .*part-1\.parquet cannot be read"):
        contact_sheet_png(paths, top, bottom, {})
