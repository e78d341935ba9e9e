"""asv benchmark suite of fasttn: one ``bench_<area>.py`` per area; see ``bench/README.md``."""
