"""What ``report`` returns: the written file's path, which a notebook shows inline."""

from __future__ import annotations

import html
from pathlib import Path

__all__ = ["ReportPath", "INLINE_BYTES"]

INLINE_BYTES = 20 * 2**20  # larger pages are linked, not embedded in the notebook


class ReportPath(type(Path())):
    """A :class:`pathlib.Path` (``str()``, ``open``, ``read_text`` as before) whose
    ``_repr_html_`` shows the report in a Jupyter notebook: the page itself in an ``iframe``
    (``srcdoc``: every figure is embedded, so it needs no file server), and a link to the
    file. Pages over :data:`INLINE_BYTES` are linked only."""

    def _repr_html_(self) -> str:
        link = f"<a href='{html.escape(self.as_posix())}' target='_blank'>{html.escape(str(self))}</a>"
        if not self.is_file():
            return f"<p>report {link} (the file is gone)</p>"
        if self.stat().st_size > INLINE_BYTES:
            return f"<p>report: {link}</p>"
        page = html.escape(self.read_text(encoding="utf-8"), quote=True)
        return (f"<p>report: {link}</p><iframe srcdoc=\"{page}\" style='width:100%;"
                "height:640px;border:1px solid #ccc'></iframe>")
