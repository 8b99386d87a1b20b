"""nbgrader configuration of the course: this repository is the course directory.

solutions/<lab>/  instructor notebooks with solutions and hidden tests (nbgrader's source)
labs/<lab>/       student notebooks made from them by `nbgrader generate_assignment` (release)
submitted/, autograded/, feedback/, gradebook.db  created while grading (not in git)
"""
from nbgrader.preprocessors import (
    CheckCellMetadata,
    ClearHiddenTests,
    ClearOutput,
    DeduplicateIds,
    OverwriteCells,
    OverwriteKernelspec,
)

from qlib.grading.screen import ScreenSubmission

c = get_config()  # noqa: F821 (provided by nbgrader)

c.CourseDirectory.course_id = "quantization"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "labs"

# Every cell gets 120 s; a check that loops forever is stopped by its own 20 s limit first,
# and after a timeout the kernel is interrupted and the rest of the notebook is still graded.
c.Execute.timeout = 120
c.Execute.interrupt_on_timeout = True

# A deleted test cell comes back (and then fails if the answer is missing), never a silent 0.
c.OverwriteCells.add_missing_cells = True

# Solution cells that import qlib or patch libraries are not run (see qlib/grading/screen.py).
c.Autograde.sanitize_preprocessors = [
    ClearOutput, DeduplicateIds, OverwriteKernelspec, OverwriteCells, ScreenSubmission, CheckCellMetadata,
]

# Feedback shows no hidden test source (their failures print a message and no traceback).
c.GenerateFeedback.preprocessors = [
    "nbgrader.preprocessors.GetGrades",
    ClearHiddenTests,
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]

c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
