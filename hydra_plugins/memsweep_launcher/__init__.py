"""memsweep's SLURM launcher for Hydra (`hydra/launcher=memsweep_slurm`, selected by cluster=slurm):
memsweep_launcher.py."""
