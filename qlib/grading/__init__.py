"""Grading of the course's labs.

* ``lab01`` ... ``lab09`` (the capstone): the checks that each lab's test cells call (expected
  values from qlib, hints that name the mistake); ``checks_common`` and ``harness``: what the checks
  of functions share; ``answers``: the checks of answers that are not functions (a choice, a number,
  a design graded in tiers).
* Sealed grading, used by ``nbgrader autograde`` through ``nbgrader_config.py``:
  ``sealed`` (the nbgrader preprocessors), ``sandbox`` (bubblewrap), ``kernel`` (a sandboxed
  Jupyter kernel driven from outside), ``remote`` and ``kernel_side`` (calling the student's
  functions in the kernel), ``wire`` (results as data only) and ``secret`` (hidden seeds).
* ``check``: ``python -m qlib.grading.check NOTEBOOK``, the same pipeline for students.
"""
