"""A stand-in for cuML (tests only): just enough of `cuml.accel` to prove pipeline's start-up logic without a
GPU. Put this folder on sys.path in a fresh process; the real cuML is never imported here."""
