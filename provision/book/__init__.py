"""The book's code: a checkout at a pinned commit (:mod:`.checkout`), the compatibility fixes that make it
run on today's stack (:mod:`.fixes`, data in ``configs/book/``), and the smoke run that proves it (:mod:`.smoke`)."""
