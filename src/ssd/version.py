"""The package's version, apart from ``ssd/__init__.py`` so that modules inside the package can read it without
importing the package's own ``__init__``."""

__version__ = "0.1.0"
