"""Rich views of results, registered by whoever draws them: a result asks here for its HTML (Jupyter's
`_repr_html_`) and imports no drawing code itself, so a library module (`jaxoip.oip.scan_result`) needs no view
module above it (`jaxoip.site`).

The package registers its own views in `jaxoip/__init__.py`, by module path: nothing is imported until Jupyter
first asks for a view.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

# "module.Class" -> the function that draws its HTML, or "module:function" until it is first used.
_HTML: dict[str, Callable[[object], str] | str] = {}


def register_html(type_name: str, render: Callable[[object], str] | str) -> None:
    """Makes `render(obj) -> str` the HTML view of objects of the class `type_name` ("module.Class") and its
    subclasses; `render` may be given as "module:function", imported when the first view is drawn."""
    _HTML[type_name] = render


def html(obj) -> str | None:
    """The HTML view registered for `obj`'s class (or the nearest base class); None where there is none (Jupyter
    then shows the `repr`)."""
    for cls in type(obj).__mro__:
        key = f"{cls.__module__}.{cls.__qualname__}"
        render = _HTML.get(key)
        if isinstance(render, str):
            module, _, name = render.partition(":")
            render = _HTML[key] = getattr(importlib.import_module(module), name)
        if render is not None:
            return render(obj)
    return None
