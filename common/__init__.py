"""The shared core. Importing it first checks that no other installed package's ``common`` or ``plots`` collides
with this project's (``common.names``): one line and exit status 1 when one does."""
from common import names as _names

_names.guard()
