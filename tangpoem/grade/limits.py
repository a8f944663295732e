"""How much of one submission the grader reads and shows, so that one file's work and its share of
the report stay bounded however large or strange the file is."""

# A course submission is ~5 KB (15 poems); 1 MB leaves room for long, rambling model outputs and still
# grades in about a second. `tangpoem grade --max-file-size` raises it.
MAX_SUBMISSION_BYTES = 1_000_000

# One answer is graded on its first this many characters (after the couplet is cut off). A Tang poem's
# continuation is under 100 and generation stops at max_new_tokens (128 in the course); only a broken
# answer is longer, and scoring all of it (sacrebleu's n-grams, the edit distance) would cost seconds.
MAX_ANSWER_CHARS = 2_000

# The HTML report and the text tables show at most this much of each graded file; what is cut says so.
SHOWN_PREDICTION_CHARS = 400   # "answer as read"
SHOWN_VERSE_CHARS = 40         # one verse in the side-by-side diff
SHOWN_EXTRA_VERSES = 4         # verses past the GT's count in the diff
SHOWN_NOTES = 30               # repair notes of one file or one poem
