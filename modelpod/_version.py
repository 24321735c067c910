"""The release, in one place: the package face, the server and the build read it here."""

__version__ = "0.1.0"
