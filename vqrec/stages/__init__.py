"""Pipeline stages: read the lake, call :mod:`vqrec.core`, commit a new version; each
stage's ``vqrec <command>`` CLI lives next to it."""
