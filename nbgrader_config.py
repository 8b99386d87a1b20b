"""nbgrader configuration of the course: this repository is the course directory.

solutions/<lab>/  instructor notebooks with solutions and hidden tests (nbgrader's source)
labs/<lab>/       student notebooks made from them by `nbgrader generate_assignment` (release)
submitted/, autograded/, feedback/, gradebook.db  created while grading (not in git)

Grading is sealed (qlib/grading/sealed.py): the graded notebook is rebuilt from the source
notebook with the student's answers; it runs in a bubblewrap sandbox (qlib/grading/sandbox.py),
and every test cell is evaluated here, in nbgrader's process, on the data the student's
functions return. The hidden inputs come from a course secret kept outside the repository
(qlib/grading/secret.py).
"""
from nbconvert.preprocessors import ClearMetadataPreprocessor
from nbgrader.preprocessors import (
    AssignLatePenalties,
    CheckCellMetadata,
    ClearHiddenTests,
    ClearOutput,
    DeduplicateIds,
    IgnorePattern,
    LimitOutput,
    OverwriteKernelspec,
    SaveAutoGrades,
)

from qlib.grading.sealed import RebuildFromSource, SealedExecute

c = get_config()  # noqa: F821 (provided by nbgrader)

c.CourseDirectory.course_id = "quantization"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "labs"

# The submission is rebuilt on the source notebook: locked, test and set-up cells come from
# there (a deleted or edited test cell is simply the source's again), answers from the student.
c.Autograde.sanitize_preprocessors = [
    ClearOutput, DeduplicateIds, OverwriteKernelspec, RebuildFromSource, CheckCellMetadata,
]
# Cells run in a sandboxed kernel, 120 s each; test cells are evaluated outside it.
c.Autograde.autograde_preprocessors = [
    SealedExecute, IgnorePattern, ClearMetadataPreprocessor, LimitOutput, SaveAutoGrades,
    AssignLatePenalties, CheckCellMetadata,
]
c.SealedExecute.timeout = 120

# Feedback shows no hidden test source (their failures print a message and no traceback).
c.GenerateFeedback.preprocessors = [
    "nbgrader.preprocessors.GetGrades",
    ClearHiddenTests,
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]
# Its math is typeset offline: MathJax (the course site's copy) is written into each student's
# feedback folder, never loaded from a CDN (qlib/grading/lms.py).
c.GenerateFeedback.exporter_class = "qlib.grading.lms.OfflineMathHTMLExporter"

c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}


# ---------------------------------------------------------------------------------------------
# LMS downloads: `python -m qlib.grading.course lms-collect LAB --lms canvas|moodle ARCHIVE.zip`
# runs `nbgrader zip_collect` with these file-name patterns (qlib/grading/lms.py maps the LMS's
# ids to students and keeps each student's latest notebook). Matched against the whole path.
# ---------------------------------------------------------------------------------------------

# Canvas "Download Submissions": <sortable name>[_LATE]_<user id>_<attachment id>_<file name>,
# e.g. doejane_LATE_1234_56789_lab03_linear_quantization-1.ipynb (-1, -2: uploaded again).
c.CanvasCollector.named_regexp = (
    r"(?i).*/(?P<name>[^/]*?)(?P<late>_late)?_(?P<student_id>\d+)_(?P<attachment>\d+)_(?P<file_id>[^/]+)$"
)
# Moodle "Download all submissions": <Full Name>_<participant id>_assignsubmission_file_/<file>,
# or with "Download submissions in folders" off, the same prefix glued to the file name.
c.MoodleCollector.named_regexp = (
    r".*/(?P<name>[^/]+?)_(?P<student_id>\d+)_assignsubmission_file_/?(?:[^/]+/)*?(?P<file_id>[^/]+)$"
)
