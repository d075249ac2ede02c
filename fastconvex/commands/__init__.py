"""Subcommands of the ``fastconvex`` command line, one module each."""
