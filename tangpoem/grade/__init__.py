"""Grading student results.txt / results.json against the Tang-poem test GT.

    from tangpoem.grade import grade_paths, grade_file, grade_predictions, load_test_poems
"""

from tangpoem.grade.grading import (ClassReport, FileResult, PoemResult, grade_file, grade_paths,
                                    grade_predictions)
from tangpoem.grade.parse import TestPoem, load_test_poems

__all__ = ["ClassReport", "FileResult", "PoemResult", "TestPoem", "grade_file", "grade_paths",
           "grade_predictions", "load_test_poems"]
