"""Griffe extension for the docs site: the docstrings' reST roles become cross-references.

wsclient's docstrings are Google style (``Args:``, ``Raises:``) written with reST inline roles
(``:class:`~wsclient.Pool```, ``:meth:`start```, ``:data:`VENUE_PROFILES```), which Markdown would
print as they are. mkdocstrings leaves markup to the author (its maintainers recommend a Griffe
extension for this), so this one rewrites each role, once the package is loaded:

* a target that resolves, in the scope of the object whose docstring it is (or, as Sphinx's leading
  dot means, as the unique object whose path ends with it), to an object of the package becomes an
  *optional* autorefs link: a link when the site renders that object, plain code when it does not
  (an internal class named in a public docstring);
* a target outside the package (``asyncio.Task``, ``TimeoutError``, ``pydantic.BaseModel``) becomes
  plain code: the site has no inventory of other projects, and no network to fetch one;
* a target naming nothing (a typo, a renamed method) is logged as a warning, so that
  ``mkdocs build --strict`` fails on it and names the object and the target.

It also turns the reST literal-block marker (a paragraph ending in ``::``) into a colon: the
indented block that follows is already a code block in Markdown.
"""

from __future__ import annotations

import builtins
import html
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?P<role>class|meth|func|attr|data|mod|exc|obj|const|type):`(?P<body>[^`]+)`")
_EXPLICIT = re.compile(r"^(?P<title>.+?)\s*<(?P<target>[^<>]+)>$")
_LITERAL_INTRO = re.compile(r"(?<=\S)::(?=\n\n)")  # "frame::" + blank line + indented code
_CALLABLE_ROLES = {"meth", "func"}

logger = griffe.get_logger("rst_roles")


class RstRoles(griffe.Extension):
    """Rewrite reST roles in every docstring of the loaded package (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        self._pkg = pkg
        self._suffixes: dict[str, list[str]] = {}
        objects = list(_walk(pkg))
        for obj in objects:
            parts = obj.path.split(".")
            for i in range(1, len(parts)):
                self._suffixes.setdefault(".".join(parts[i:]), []).append(obj.path)
        for obj in objects:
            docstring = obj.docstring
            if docstring is None or ":" not in docstring.value:
                continue
            text = _ROLE.sub(lambda m, obj=obj: self._rewrite(obj, m), docstring.value)
            docstring.value = _LITERAL_INTRO.sub(":", text)

    def _rewrite(self, obj: griffe.Object, match: re.Match[str]) -> str:
        role, body = match["role"], match["body"].strip()
        explicit = _EXPLICIT.match(body)
        if explicit:
            title, target = explicit["title"], explicit["target"].strip()
        else:
            target = body
            title = body.lstrip("~.")
            if body.startswith("~"):
                title = title.rsplit(".", 1)[-1]
            if role in _CALLABLE_ROLES and not title.endswith(")"):
                title += "()"
        target = target.lstrip("~").removesuffix("()")
        code = f"<code>{html.escape(title)}</code>"
        path = self._resolve(obj, target)
        if path is None:
            return code  # outside the package
        path = self._canonical(path)
        if path is None:
            where = obj.docstring.lineno if obj.docstring else None
            logger.warning(
                "%s:%s: %s's docstring refers to %s, which names nothing in %s",
                obj.relative_filepath,
                where,
                obj.path,
                match[0],
                self._pkg.name,
            )
            return code
        return f'<autoref optional identifier="{html.escape(path)}">{code}</autoref>'

    def _resolve(self, obj: griffe.Object, target: str) -> str | None:
        """The full path ``target`` means in ``obj``'s docstring, or None outside the package."""
        relative = target.startswith(".")
        target = target.lstrip(".")
        first, _, rest = target.partition(".")
        if first == self._pkg.name:
            return target
        if not relative:
            try:
                path = obj.resolve(first)  # members, then the enclosing scopes and their imports
            except griffe.NameResolutionError:
                pass
            else:
                full = f"{path}.{rest}" if rest else path
                return full if _root(full) == self._pkg.name else None
        if relative:
            # Sphinx's ".name": looked up from the object outwards (".redirect" in a transport module
            # is the sibling module), then anywhere if only one object ends with it.
            scope: griffe.Object | None = obj
            while scope is not None:
                if self._canonical(f"{scope.path}.{target}") is not None:
                    return f"{scope.path}.{target}"
                scope = scope.parent
        candidates = self._suffixes.get(target, [])
        if len(candidates) == 1:
            return candidates[0]
        if not relative and (hasattr(builtins, first) or ("." in target and not candidates)):
            return None  # TimeoutError, asyncio.Task: another project's object
        # Ambiguous or unknown: the package's name in front makes it a broken reference reported.
        return f"{self._pkg.name}.{target}"

    def _canonical(self, path: str) -> str | None:
        """Where the object at ``path`` is defined (the page documents it there), or None if no object
        is at ``path``."""
        try:
            found = self._pkg.modules_collection.get_member(path)
            canonical: str = found.canonical_path
        except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
        return canonical


def _root(path: str) -> str:
    return path.split(".", 1)[0]


def _walk(obj: griffe.Object) -> Any:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)  # type: ignore[arg-type]
