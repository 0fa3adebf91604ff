"""Bringing data files from their sources to local disk: fetch, verify, unpack (or link), record.

The engine and its parts live here (``engine``: what each file still needs and the run; ``state``: the record of
each file; ``fetch``, ``segments``, ``fallback``: a verified file under its final name; ``unpack``, ``copies``,
``mirror``, ``probe``; ``signals``, ``stop``, ``context``: what the parts share). Where bytes come from is
``transport/``; zip archives are ``archive/``. See docs/architecture.md.
"""
