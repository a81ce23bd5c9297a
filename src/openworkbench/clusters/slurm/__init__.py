"""The Slurm cluster backend: sbatch, squeue, scontrol and scancel, driven by pure renderers and parsers."""

from openworkbench.clusters.slurm.cluster import SlurmCluster

__all__ = ["SlurmCluster"]
