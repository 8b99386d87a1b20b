"""Sphinx extension: the ``qlib-api`` directive of the API reference pages (``book/api/``).

One line per module::

    ```{eval-rst}
    .. qlib-api::

       qlib.linear
       qlib.granularity
    ```

Each line becomes a section titled with the module's name holding ``automodule`` with every public
member defined in that module, in source order. A function is then linkable from any chapter as
``{py:func}`qlib.linear.quantize```, a class as ``{py:class}`qlib.observers.MinMaxObserver```, a
module as ``{py:mod}`qlib.granularity```. The top-level re-exports of ``qlib/__init__.py`` are never
documented, so no object is described twice.

qlib's docstrings are written as plain text that reads well in ``help()``: formulas sit in indented
blocks aligned in columns, and ``|x|`` means an absolute value. :func:`plain_text_formulas` lets
reStructuredText show them as written: an indented block that follows a paragraph becomes a
plain-text code block, and a ``|`` in prose is escaped (in reStructuredText ``|x|`` would be a substitution).
"""
from __future__ import annotations

import ast
import importlib
import inspect
import os
import re

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.ext.autodoc import DataDocumenter
from sphinx.pycode import ModuleAnalyzer
from sphinx.util.docutils import SphinxDirective
from sphinx.util.inspect import object_description
from sphinx.util.nodes import nested_parse_with_titles

#: Options of every module's ``automodule``: its documented members, in source order.
AUTOMODULE_OPTIONS = (":members:", ":member-order: bysource", ":show-inheritance:")
#: A constant's value is shown beside its name when it is this short (a float format is, a table is not).
MAX_VALUE_LENGTH = 110


def undocumented_constants(module) -> list[str]:
    """Public names that ``module`` assigns at its top level without a ``#:`` comment or docstring.

    ``automodule`` skips them (autodoc documents module data only when it has a doc comment), but
    the chapters name some of them, e.g. ``qlib.floating_point.FP8_E4M3``; they are listed after the
    module's documented members, with their value when it is short.
    """
    tree = ast.parse(inspect.getsource(module))
    assigned = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
            if isinstance(node, ast.AnnAssign) else []
        for target in targets:
            assigned += [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]
    documented = {name for (namespace, name) in ModuleAnalyzer.for_module(module.__name__).find_attr_docs()
                  if namespace == ""}
    public = [name for name in dict.fromkeys(assigned) if not name.startswith("_") and name not in documented]
    listed = getattr(module, "__all__", None)
    return [name for name in public if listed is None or name in listed]


class ShortValueDataDocumenter(DataDocumenter):
    """Module constants: their doc comment only (never the docstring of their type), and their value
    when it is short."""

    priority = DataDocumenter.priority + 1

    def get_doc(self) -> list[list[str]] | None:
        comment = self.get_module_comment(self.objpath[-1])
        return [comment] if comment else []

    def should_suppress_value_header(self) -> bool:
        if super().should_suppress_value_header():
            return True
        if isinstance(self.object, os.PathLike):
            return True  # a path on the machine that built the site says nothing to a reader
        try:
            return len(object_description(self.object)) > MAX_VALUE_LENGTH
        except ValueError:
            return True


LIST_ITEM = re.compile(r"^(\s*)([*+-]|\d+\.|#\.|\(\d+\))\s+")
ROLE_OR_TEXT = re.compile(r"(:[\w:+-]+:)?`[^`]+`")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _content_indent(paragraph_first: str, previous: str) -> int:
    """Indent of a paragraph's text: past the marker on a list item's first line."""
    item = LIST_ITEM.match(previous)
    if previous is paragraph_first and item:
        return item.end()
    return _indent(previous)


def _escape_bars(line: str, in_literal: bool = False) -> tuple[str, bool]:
    """``line`` with each ``|`` outside inline literals and roles escaped, and whether an inline
    literal (````...````) is still open at its end (one may run on to the next line)."""
    parts = line.split("``")
    for i, part in enumerate(parts):
        if (i % 2 == 0) != in_literal:     # outside a literal: protect roles and `text`, escape the rest
            pieces, last = [], 0
            for match in ROLE_OR_TEXT.finditer(part):
                pieces += [part[last:match.start()].replace("|", "\\|"), match.group(0)]
                last = match.end()
            parts[i] = "".join(pieces) + part[last:].replace("|", "\\|")
    return "``".join(parts), in_literal != (len(parts) % 2 == 0)


def plain_text_formulas(lines: list[str]) -> list[str]:
    """Docstring ``lines`` (dedented) with formula blocks literal and prose ``|`` escaped.

    A block indented deeper than the text of the paragraph before it, after a blank line, is a
    formula or code block in qlib's docstrings; reStructuredText would read it as a block quote
    (and warn on its uneven indentation). It becomes a ``code-block:: text`` (shown as written,
    without syntax colours). Blocks that already are literal (after ``::``), directives
    (``.. math::``) and doctests are left alone. A list item's text continued in an aligned column
    is moved under the item's text (it would otherwise read as a definition list).
    """
    out: list[str] = []
    previous = paragraph_first = None   # last non-blank line before the current point, and its paragraph's first
    literal_indent = None               # indent of the paragraph that opened the current literal block
    blank_before = True
    in_literal = False                  # an inline literal left open at the end of the previous line
    for line in lines:
        if not line.strip():
            out.append(line)
            blank_before = True
            continue
        indent = _indent(line)
        if literal_indent is not None and indent > literal_indent:
            out.append(line)            # inside a literal block: as written
            previous, blank_before = line, False
            continue
        literal_indent = None
        if (blank_before and previous is not None and not line.lstrip().startswith(">>>")
                and indent > _content_indent(paragraph_first, previous)):
            base = _content_indent(paragraph_first, previous)
            if not (previous.lstrip().startswith("..") or previous.rstrip().endswith("::")):
                # not already a directive's content or a literal block: show it as plain text
                out[len(out) - 1:len(out) - 1] = ["", " " * base + ".. code-block:: text"]
            literal_indent = min(base, _indent(previous))
            out.append(line)
            previous, blank_before = line, False
            continue
        if blank_before or previous is None:
            paragraph_first = line
        elif (LIST_ITEM.match(paragraph_first) and not LIST_ITEM.match(line)
              and indent > LIST_ITEM.match(paragraph_first).end()):
            # a list item's text continued in an aligned column: reStructuredText would make the
            # item a definition list; it is the same sentence, so it goes under the item's text
            line = " " * LIST_ITEM.match(paragraph_first).end() + line.lstrip()
        if not line.lstrip().startswith(("..", ">>>")):
            line, in_literal = _escape_bars(line, in_literal and not blank_before)
        out.append(line)
        previous, blank_before = line, False
    return out


def _process_docstring(app, what, name, obj, options, lines):
    if name.startswith("qlib."):
        lines[:] = plain_text_formulas(lines)


class QlibApi(SphinxDirective):
    """Document each module named in the content, one per line."""

    has_content = True

    def run(self) -> list[nodes.Node]:
        names = [line.strip() for line in self.content if line.strip() and not line.strip().startswith("#")]
        if not names:
            raise self.error("qlib-api: name at least one module, one per line")
        lines = StringList()
        source = self.get_source_info()[0]
        for name in names:
            if not name.startswith("qlib.") or name.split(".")[-1].startswith("_"):
                raise self.error(f"qlib-api: {name!r} is not a public qlib module")
            try:
                module = importlib.import_module(name)
            except ImportError as error:
                raise self.error(f"qlib-api: cannot import {name}: {error}") from error
            block = [f"``{name}``", "-" * (len(name) + 4), "", f".. automodule:: {name}"]
            block += [f"   {option}" for option in AUTOMODULE_OPTIONS] + [""]
            for constant in undocumented_constants(module):
                block += [f".. autodata:: {name}.{constant}", ""]
            for line in block:
                lines.append(line, source)
        holder = nodes.section()
        holder.document = self.state.document
        nested_parse_with_titles(self.state, lines, holder, self.content_offset)
        return holder.children


def setup(app):
    app.setup_extension("sphinx.ext.autodoc")
    app.add_directive("qlib-api", QlibApi)
    app.add_autodocumenter(ShortValueDataDocumenter, override=True)
    app.connect("autodoc-process-docstring", _process_docstring)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
