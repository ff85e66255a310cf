"""`guie plan`: what a params file costs on a machine before anything runs (time, memory, disk, per stage)."""
