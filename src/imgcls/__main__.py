"""``python -m imgcls``: the same as the ``imgcls`` command."""

from imgcls.cli import entry

entry()
