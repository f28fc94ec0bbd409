"""hpcops: a lab's experiment queue in front of Slurm."""

__version__ = "0.1.0"
