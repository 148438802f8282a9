"""Signal processing for the media engine: pure numpy, batch-first.

Every stage works on arrays shaped ``[legs, samples]`` so the engine can run
one call per stage for all live legs in a tick. Stateful stages keep their
state in arrays indexed by slot (``capacity`` rows); ``process(frames, slots)``
maps row *i* of ``frames`` to state row ``slots[i]`` (default: rows 0..n-1) and
``reset(slots)`` clears slots so a new call can reuse them.

This package must not do I/O, read a clock, log, or hold asyncio objects.
"""
