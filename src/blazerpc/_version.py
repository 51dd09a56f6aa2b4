"""The package version, apart from the package root so that nothing imports the root for it."""

__version__ = "3.0.0.dev0"
