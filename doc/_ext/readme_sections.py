"""Include sections of the README by their titles, so the user guide is the README.

``.. readme-section:: Title`` inserts the README section of that title (its heading
and body, up to the next heading of any level); ``:no-title:`` drops the heading, for a
page that gives its own. ``:tables-only:`` inserts only the section's simple tables.
Since the README is a single page, its cross references are rewritten for the site:
a section reference (```Compensation`_``) becomes a ``:ref:`` to the page that includes
that section, and a link to ``examples/plot_x.py`` one to the gallery's page.
"""

import re
from pathlib import Path

from docutils.parsers.rst import Directive, directives
from docutils.statemachine import StringList

README = Path(__file__).resolve().parents[2] / "README.rst"
_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+])\1{3,}$")


def slug(title):
    return "readme-" + re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _sections(lines):
    """Title -> (start of body, end) for every heading (title line over an underline)."""
    heads = [i for i in range(len(lines) - 1)
             if lines[i].strip() and _UNDERLINE.match(lines[i + 1])
             and len(lines[i + 1]) >= len(lines[i].rstrip())
             and not _UNDERLINE.match(lines[i])]
    out = {}
    for k, i in enumerate(heads):
        end = heads[k + 1] if k + 1 < len(heads) else len(lines)
        if end < len(lines) and end > 0 and _UNDERLINE.match(lines[end - 1]):
            end -= 1  # an overlined title's overline
        out[lines[i].strip()] = (i, end)
    return out


def _rewrite(text, titles):
    def section_ref(match):
        title = " ".join(match.group(1).split())
        if title not in titles:
            return match.group(0)
        return f":ref:`{title} <{slug(title)}>`"

    text = re.sub(r"`([^`<]+?)`_", section_ref, text)
    return re.sub(r"`([^`<]+?)\s*<examples/(plot_\w+)\.py>`_",
                  r":ref:`\1 <sphx_glr_auto_examples_\2.py>`", text)


class ReadmeSection(Directive):
    required_arguments = 1
    final_argument_whitespace = True
    option_spec = {"no-title": directives.flag, "tables-only": directives.flag}

    def run(self):
        env = self.state.document.settings.env
        env.note_dependency(str(README))
        lines = README.read_text(encoding="utf-8").splitlines()
        sections = _sections(lines)
        title = self.arguments[0]
        if title not in sections:
            raise self.error(f"README.rst has no section titled {title!r}")
        start, end = sections[title]
        body = lines[start + 2:end]
        if "tables-only" in self.options:
            body = _tables(body)
        elif "no-title" not in self.options:
            body = lines[start:start + 2] + body
        text = _rewrite("\n".join(body), set(sections))
        new = [f".. _{slug(title)}:", ""] if "tables-only" not in self.options else []
        new += text.splitlines()
        self.state_machine.insert_input(StringList(new, str(README)), str(README))
        return []


def _tables(body):
    """The simple tables of a section (each from its first border to its last)."""
    out, i = [], 0
    while i < len(body):
        if re.match(r"^=+( +=+)+$", body[i]):
            border, j, seen = body[i], i + 1, 1
            while j < len(body) and seen < 3:
                if body[j] == border:
                    seen += 1
                j += 1
            out += body[i:j] + [""]
            i = j
        else:
            i += 1
    return out


def setup(app):
    app.add_directive("readme-section", ReadmeSection)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
