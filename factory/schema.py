"""Column names and Arrow schemas: the one place the data's shape is written down."""
from __future__ import annotations

import pyarrow as pa

# Caption rows, as the reader emits them and curation passes them on.
ID = "id"  # string: the user's id, or a hash of the caption when none was given
CAPTION = "caption"  # string: kept whole, even where encoders truncate it
SOURCE = "source"  # string: "file:line" (or "file:row"), for error messages and rejects
POS = "pos"  # int64: (file index << 32) | row: the input order, which breaks dedup ties
RAW = "raw"  # string: the raw input row as text, kept for rejects
REASON = "reason"  # string or null: why a row was rejected; null = kept
DETAIL = "detail"  # string or null: the measured value behind a reason, or the id duplicated

# Candidates: one row per generated sample.
SAMPLE = "sample"  # int32: 0..repeat-1
GENERATOR = "generator"  # string: the generator (its model group's name) that made the sample; null in outputs made before it
SEED = "seed"  # int64: the generator seed of this (id, sample)
IMAGE = "image"  # binary: encoded image bytes (PNG by default)
WIDTH = "width"
HEIGHT = "height"
CLIP_SCORE = "clip_score"  # float64: max(cos(image, "A photo depicts " + caption), 0)
SSIM = "ssim"  # float64: image vs its 768->336->768 round trip, grayscale
SCORE = "score"  # float64: clip_score + lam * ssim
RANK = "rank"  # int64: 1 = best, in dataset/ only

CAPTION_ROW = pa.schema(
    [
        pa.field(ID, pa.string()),
        pa.field(CAPTION, pa.string()),
        pa.field(SOURCE, pa.string()),
        pa.field(POS, pa.int64()),
        pa.field(RAW, pa.string()),
        pa.field(REASON, pa.string()),
        pa.field(DETAIL, pa.string()),
    ]
)

REJECTS = pa.schema(
    [
        pa.field(ID, pa.string()),
        pa.field(RAW, pa.string()),
        pa.field(REASON, pa.string()),
        pa.field(DETAIL, pa.string()),
        pa.field(SOURCE, pa.string()),
    ]
)

CANDIDATES = pa.schema(
    [
        pa.field(ID, pa.string()),
        pa.field(CAPTION, pa.string()),
        pa.field(SAMPLE, pa.int32()),
        pa.field(GENERATOR, pa.string()),
        pa.field(SEED, pa.int64()),
        pa.field(IMAGE, pa.binary()),
        pa.field(WIDTH, pa.int32()),
        pa.field(HEIGHT, pa.int32()),
        pa.field(CLIP_SCORE, pa.float64()),
        pa.field(SSIM, pa.float64()),
        pa.field(SCORE, pa.float64()),
        pa.field(REASON, pa.string()),  # null for a usable sample; else never selected
    ]
)

DATASET = pa.schema(list(CANDIDATES) + [pa.field(RANK, pa.int64())])

# curated/: the captions curation kept, what generation reads (and `python -m factory curate` leaves).
CURATED = pa.schema([pa.field(ID, pa.string()), pa.field(CAPTION, pa.string()), pa.field(SOURCE, pa.string())])

# The columns selection reads: never the image bytes.
SELECT_COLUMNS = [ID, SAMPLE, GENERATOR, SCORE, CLIP_SCORE, SSIM, REASON]
# Prefix of the per-row seconds a stage with a pool spent on a batch (added in flight by the engine,
# summed into the candidates writer's summary rows): the run's busy seconds per stage.
BUSY = "_busy_"
# int32, in selection only: which candidates file a score row came from, so that the dataset
# takes exactly that row, even where candidates/ holds an (id, sample) twice.
FILE = "file"
# int64, in distributed selection only: a score row's index within its candidates file, so that "the
# first row" of exact duplicates means the same as in read_scores' (file, row) order on any worker.
ROW = "row"

# Reasons a row can be rejected or a sample marked unusable.
R_UNREADABLE = "unreadable_file"  # a whole file; the scan stops the run on it before anything is generated
R_MALFORMED = "malformed_row"  # not JSON, not UTF-8, a NUL in the caption, more CSV fields than the header
# Beyond what the reader takes of one row (io/read.py): a line, CSV record or JSON value over
# MAX_ROW_BYTES, a caption or id over MAX_FIELD_CHARS, JSON nested too deep for Python's parser, an
# integer of more than 4300 digits.
R_TOO_LARGE = "row_too_large"
R_NO_CAPTION = "missing_caption"
R_NOT_STRING = "caption_not_string"
R_BLANK = "blank_caption"
R_DUP_ID = "duplicate_id"
R_DUP_CAPTION = "duplicate_caption"
R_BAD_IMAGE = "bad_image"  # NaN/Inf or a single colour
R_BAD_SCORE = "bad_score"  # a NaN/Inf CLIPScore or SSIM (e.g. an fp16 overflow): never ranked
R_OOM = "out_of_memory"
# Caption rules (curate/rules.py), in the order they are checked.
R_TOO_SHORT = "too_short"
R_TOO_LONG = "too_long"
R_ALNUM = "alnum_ratio"
R_SPECIAL = "special_ratio"
R_CHAR_REP = "char_repetition"
R_WORD_REP = "word_repetition"
R_FLAGGED = "flagged_words"
# Model and corpus-level curation.
R_NEAR_DUP = "near_duplicate"
R_PERPLEXITY = "perplexity"
R_LLM_JUDGE = "llm_judge"

# Columns of curation's own passes (never in candidates or the dataset).
NORM_HASH = "norm_hash"  # int64: hash of the normalised caption (exact dedup, changed-caption check)
MINHASH = "minhash"  # fixed_size_list<uint32>[num_perm]: the signature of a caption (near dedup)
VERDICT = "llm_verdict"  # string: yes | no | unparseable; null for rows not judged (already rejected)
ANSWER = "llm_answer"  # string: the LLM judge's raw answer
# Unusable for a reason that may pass: a resumed run makes these samples again (after, say, model.vae_tiling=true
# or fewer scorers on the GPU); the old row stays on disk and the counts take the best outcome of each sample.
RETRY_ON_RESUME = (R_OOM,)
