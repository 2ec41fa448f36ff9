"""Measurement: peak memory (CUDA, CPU allocator accounting, estimates), timing, environment."""
