"""Collection rules for the whole tree (``testpaths`` includes ``src/seamfree`` for the docstring examples)."""

from importlib.util import find_spec

# The napari widgets import napari and Qt at module level (napari loads them, through the plugin manifest); without
# the napari extra the doctest collector cannot import them. Everything else in the package imports without it.
collect_ignore = [] if find_spec("napari") and find_spec("magicgui") else ["src/seamfree/napari/widgets.py"]
