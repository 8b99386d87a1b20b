"""Sphinx extension: each chapter downloads as an executed notebook that reads like the page.

A chapter is a MyST Markdown notebook; its text shows computed numbers through glue roles
(``{glue:text}`acc:.1f```), which Jupyter cannot resolve. MyST-NB writes the executed notebook to
``_build/jupyter_execute/<page>.ipynb`` and the glued values beside it (``<page>.glue.json``).
This extension writes a copy of that notebook to ``_sources/<page>.ipynb`` in which

* every glue role in the Markdown is replaced by the glued value, formatted as the page formats it
  (MyST-NB's own ``format_plain_text``), so ``{glue:text}`acc:.1f``` becomes e.g. ``97.3``;
* the cross-references Jupyter cannot follow read as the page shows them: ``{eq}`` -> ``(3.1)``,
  ``{numref}`` -> ``Fig. 3.1``, ``{cite:p}`` -> ``(Jacob et al., 2018)``, ``{doc}`` -> the page
  title, ``{py:func}`` -> the name as code; labelled display equations get ``\\tag{3.1}``;
  admonitions (the exercises) become block quotes, and the bibliography the list of the works
  the page cites;
* Markdown printed by code cells (tables) gets the same cross-references;
* every cell is kept, hidden ones too (the set-up cell holds the imports a reader needs),

and offers it in the download menu of the page (sphinx-book-theme's ``.ipynb`` entry, the one the
theme shows when it has an executed notebook). A glue role that cannot be replaced fails the build.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
from docutils import nodes
from sphinx.util import logging

logger = logging.getLogger(__name__)

#: Any MyST role: ``{name}`content```.
ROLE = re.compile(r"\{(?P<name>[a-zA-Z][\w:-]*)\}`(?P<content>[^`]*)`")
#: A labelled display equation: ``$$ ... $$ (label)``.
LABELLED_MATH = re.compile(r"\$\$(?P<body>.+?)\$\$[ \t]*\((?P<label>[^)\s]+)\)", re.DOTALL)
#: A fenced directive: ```` ```{name} argument ```` ... ```` ``` ```` (or with ``:::``).
DIRECTIVE = re.compile(r"^(?P<fence>`{3,}|:{3,})\{(?P<name>[\w:-]+)\}[ \t]*(?P<arg>[^\n]*)\n(?P<body>.*?)^(?P=fence)[ \t]*$",
                       re.MULTILINE | re.DOTALL)
#: The options at the top of a directive's body: ``:class: dropdown`` lines, or a ``---`` YAML block.
DIRECTIVE_OPTIONS = re.compile(r"\A(?:---\n.*?\n---\n|(?::[\w-]+:[^\n]*\n)+)", re.DOTALL)
#: A MyST target line: ``(label)=``.
TARGET = re.compile(r"^\([^)\s]+\)=[ \t]*\n", re.MULTILINE)
#: Characters that would change the meaning of a pasted value in Markdown.
MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|])")
GLUE_ROLES = {"glue", "glue:", "glue:any", "glue:text", "glue:md", "glue:math"}


class GlueError(ValueError):
    """A glue role names a value the notebook did not glue, or one that cannot be shown as text."""


def _plain(data: dict) -> str:
    text = data.get("text/plain")
    if text is None:
        raise KeyError("text/plain")
    return "".join(text) if isinstance(text, list) else text


def paste_glue(role: str, content: str, glue: dict) -> str:
    """The text the page shows for one glue role (``role`` is e.g. ``"glue:text"``).

    ``glue`` maps each glued name to its output (``{"data": {"text/plain": ...}}``), as in
    MyST-NB's ``<page>.glue.json``.
    """
    from myst_nb.core.variables import format_plain_text

    key, fmt = content, None
    if role == "glue:text":
        key, _, fmt = content.rpartition(":") if ":" in content else (content, "", "s")
    elif role == "glue:md" and ":" in content:
        key = content.rpartition(":")[0]
    if "::" in content:
        raise GlueError(f"{{{role}}}`{content}`: values glued by another page are not supported")
    if key not in glue:
        raise GlueError(f"{{{role}}}`{content}`: nothing was glued under the name {key!r}")
    data = glue[key].get("data", {})
    try:
        if role == "glue:text":
            return MARKDOWN_SPECIAL.sub(r"\\\1", format_plain_text(_plain(data), fmt))
        if role == "glue:md" or (role in {"glue", "glue:", "glue:any"} and "text/markdown" in data):
            return "".join(data["text/markdown"])
        if role == "glue:math":
            latex = "".join(data.get("text/latex") or _plain(data)).strip().strip("$")
            return f"${latex}$"
        return MARKDOWN_SPECIAL.sub(r"\\\1", str(format_plain_text(_plain(data), "")))
    except KeyError as error:
        raise GlueError(f"{{{role}}}`{content}`: the value {key!r} has no {error.args[0]} form") from None


def paste_all_glue(markdown: str, glue: dict) -> str:
    """``markdown`` with every glue role replaced by its value (see :func:`paste_glue`)."""
    def replace(match):
        if match["name"] not in GLUE_ROLES:
            return match[0]
        return paste_glue("glue:any" if match["name"] in {"glue", "glue:"} else match["name"],
                          match["content"], glue)

    text = ROLE.sub(replace, markdown)
    if "{glue" in text:
        raise GlueError("a glue role remains that is not of the form {glue:...}`name`: "
                        + text[text.index("{glue"):][:60])
    return text


def plain_latex(text: str) -> str:
    """BibTeX text as plain Unicode: ``L{\\'e}onard`` -> ``Léonard``, braces dropped."""
    import codecs

    import latexcodec  # noqa: F401 - registers the "ulatex" codec

    return re.sub(r"[{}]", "", codecs.decode(text, "ulatex"))


class References:
    """How the page shows a cross-reference, read from the built environment."""

    def __init__(self, app, docname: str):
        self.app, self.env, self.docname = app, app.env, docname
        self.cited: list[str] = []      # the page's citation keys, for its reference list

    def collect_citations(self, markdown: str) -> None:
        for match in ROLE.finditer(markdown):
            if match["name"].startswith("cite"):
                for key in (k.strip() for k in match["content"].split(",")):
                    if key not in self.cited:
                        self.cited.append(key)

    def entry(self, key: str):
        """The bibliography entry of a citation key (a bibliography's :keyprefix: such as "ch7-" removed)."""
        entries = self.env.get_domain("cite").bibdata.data.entries
        entry, bare = entries.get(key), key
        while entry is None and "-" in bare:
            bare = bare.split("-", 1)[1]
            entry = entries.get(bare)
        return entry

    def number(self, docname: str, figtype: str, node_id: str) -> str:
        numbers = self.env.toc_fignumbers.get(docname, {}).get(figtype, {}).get(node_id)
        return ".".join(map(str, numbers)) if numbers else ""

    def eq(self, label: str) -> str:
        found = self.env.get_domain("math").equations.get(label)
        if not found:
            return f"({label})"
        docname, eqno = found
        number = self.number(docname, "displaymath", nodes.make_id(f"equation-{label}")) or str(eqno)
        return f"({number})"

    def numref(self, content: str) -> str:
        match = re.fullmatch(r"(?P<title>.*?)\s*<(?P<label>[^>]+)>", content, re.DOTALL)
        title, label = (match["title"], match["label"]) if match else (None, content)
        std = self.env.get_domain("std")
        docname, node_id = std.labels.get(label, (None, None, None))[:2]
        if docname is None:
            docname, node_id = std.anonlabels.get(label, (None, None))
        if docname is None:
            return label
        number = ""
        for figtype in ("figure", "table", "code-block", "displaymath", "section"):
            number = self.number(docname, figtype, node_id)
            if number:
                break
        fmt = self.app.config.numfig_format.get(figtype, "%s")
        if title:
            return title.replace("%s", number).replace("{number}", number)
        return fmt % number if number else label

    def doc(self, content: str) -> str:
        match = re.fullmatch(r"(?P<title>.*?)\s*<(?P<target>[^>]+)>", content, re.DOTALL)
        if match:
            return match["title"]
        target = content
        base = self.docname.rsplit("/", 1)[0] if "/" in self.docname else ""
        parts = (base.split("/") if base and not target.startswith("/") else []) + target.lstrip("/").split("/")
        resolved = []
        for part in parts:
            if part == "..":
                resolved = resolved[:-1]
            elif part not in ("", "."):
                resolved.append(part)
        title = self.env.titles.get("/".join(resolved))
        return title.astext() if title is not None else target

    def cite(self, content: str, textual: bool) -> str:
        cited = []
        for key in (k.strip() for k in content.split(",")):
            entry = self.entry(key)
            cited.append((self.authors(entry, short=True), entry.fields.get("year", "")) if entry else (key, ""))
        if textual:
            return "; ".join(f"{who} ({year})" for who, year in cited)
        return "(" + "; ".join(f"{who}, {year}" if year else who for who, year in cited) + ")"

    @staticmethod
    def authors(entry, short: bool) -> str:
        people = entry.persons.get("author") or entry.persons.get("editor") or []
        names = [" ".join(p.last_names) for p in people]
        if not names:
            return ""
        if short and len(names) > 2:
            text = f"{names[0]} et al."
        else:
            text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        return plain_latex(text)

    def bibliography(self) -> str:
        """The page's reference list, as Markdown."""
        lines = []
        for key in self.cited:
            entry = self.entry(key)
            if entry is None:
                continue
            fields = {name: plain_latex(value) for name, value in entry.fields.items()}
            venue = fields.get("journal") or fields.get("booktitle") or fields.get("publisher") \
                or fields.get("howpublished") or (f"arXiv:{fields['eprint']}" if "eprint" in fields else "")
            lines.append(f"- {self.authors(entry, short=False)} ({fields.get('year', 'n.d.')}). "
                         f"{fields.get('title', key)}." + (f" {venue}." if venue else ""))
        return "\n".join(sorted(set(lines)))

    def directive(self, match) -> str:
        name, arg = match["name"], match["arg"].strip()
        body = DIRECTIVE_OPTIONS.sub("", match["body"], count=1).strip("\n")
        if name == "bibliography":
            return self.bibliography()
        if name in {"admonition", "note", "tip", "hint", "important", "warning", "caution", "attention",
                    "seealso", "dropdown"}:
            title = arg or name.capitalize()
            quoted = "\n".join(f"> {line}" if line else ">" for line in body.splitlines())
            return f"> **{title}**\n>\n{quoted}"
        return match[0]

    def role(self, match) -> str:
        name, content = match["name"], match["content"]
        if name == "eq":
            return self.eq(content)
        if name == "numref":
            return self.numref(content)
        if name == "doc":
            return self.doc(content)
        if name in {"cite", "cite:p", "cite:ps", "cite:t", "cite:ts"}:
            return self.cite(content, textual=name.startswith("cite:t"))
        if name.startswith("py:") or name in {"mod", "func", "class", "meth", "attr", "data"}:
            shown = content.split("<")[0].strip() if "<" in content else content
            if shown.startswith("~"):
                shown = shown.rsplit(".", 1)[-1]
            return f"`{shown}`"
        if name in {"ref"}:
            return content.split("<")[0].strip() if "<" in content else content
        return match[0]

    def markdown(self, text: str) -> str:
        text = LABELLED_MATH.sub(lambda m: f"$${m['body'].rstrip()}\n\\tag{{{self.eq(m['label'])[1:-1]}}}\n$$", text)
        text = TARGET.sub("", text)
        text = DIRECTIVE.sub(self.directive, text)
        return ROLE.sub(self.role, text)


def with_cached_outputs(nb, cache_path: str):
    """``nb`` with the outputs jupyter-cache holds for its code.

    MyST-NB writes the notebook it was given to ``jupyter_execute/``; when the outputs come from
    the cache it merges them into a copy, so that file has none. The cache has them.
    """
    from jupyter_cache import get_cache

    try:
        return get_cache(cache_path).merge_match_into_notebook(nb)[1]
    except KeyError:  # not in the cache: the notebook was executed in this build, in place
        return nb


def reader_notebook(executed: Path, glue_file: Path | None, references: References | None = None,
                    cache_path: str | None = None):
    """The executed notebook with its Markdown made readable in Jupyter (see the module docstring)."""
    nb = nbformat.read(executed, as_version=4)
    if cache_path:
        nb = with_cached_outputs(nb, cache_path)
    glue = json.loads(glue_file.read_text(encoding="utf8")) if glue_file and glue_file.exists() else {}
    if references:
        for cell in nb.cells:
            if cell.cell_type == "markdown":
                references.collect_citations(cell.source)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            text = paste_all_glue(cell.source, glue)
            cell.source = references.markdown(text) if references else text
        elif cell.cell_type == "code":
            # glued values live in the text now; their hidden outputs would only puzzle Jupyter
            cell.outputs = [o for o in cell.get("outputs", []) if "scrapbook" not in o.get("metadata", {})]
        if cell.cell_type == "code" and references:
            for output in cell.get("outputs", []):
                data = output.get("data", {})
                if "text/markdown" in data:     # tables printed as MyST may hold roles too
                    markdown = data["text/markdown"]
                    data["text/markdown"] = references.markdown(
                        "".join(markdown) if isinstance(markdown, list) else markdown)
    nb.metadata.pop("source_map", None)
    return nb


def offer_executed_notebook(app, pagename, templatename, context, doctree):
    """Write ``_sources/<page>.ipynb`` for an executed Markdown notebook and put it in the download menu."""
    if doctree is None or app.builder.format != "html":
        return
    source = Path(app.env.doc2path(pagename))
    executed = Path(app.outdir).parent / "jupyter_execute" / f"{pagename}.ipynb"
    exec_data = getattr(app.env, "nb_metadata", {}).get(pagename, {}).get("exec_data")
    if source.suffix != ".md" or not exec_data or not executed.exists():
        return
    try:
        config = app.env.mystnb_config
        nb = reader_notebook(executed, executed.with_name(f"{executed.stem}.glue.json"), References(app, pagename),
                             config.execution_cache_path if config.execution_mode == "cache" else None)
    except GlueError as error:
        logger.warning(f"executed notebook of {pagename}: {error}", location=pagename)
        return
    target = Path(app.outdir) / "_sources" / f"{pagename}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)
    context["ipynb_source"] = f"{pagename}.ipynb"


def setup(app):
    # Before sphinx-book-theme builds its header buttons (priority 501) from ``ipynb_source``.
    app.connect("html-page-context", offer_executed_notebook, priority=400)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
