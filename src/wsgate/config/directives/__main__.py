"""``python -m wsgate.config.directives``: print docs/directives.md from the table."""

from wsgate.config.directives import markdown

print(markdown(), end="")
