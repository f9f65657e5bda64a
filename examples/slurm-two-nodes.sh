#!/bin/bash
# The identity tune on two machines under Slurm: one tunelab launcher per node, each starting
# one process per GPU; node 0 (the first host of the allocation) hosts the rendezvous.
# The run folder must be on a disk both nodes share, at the same path (checked at start).
#   sbatch examples/slurm-two-nodes.sh
#SBATCH --job-name=tunelab-identity
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
set -euo pipefail
MASTER="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):29500"
export MASTER
# single quotes: each node expands its own SLURM_NODEID
srun bash -c 'tunelab train examples/identity.yaml output=/shared/runs/identity \
  train.distributed=zero2 --nproc "$SLURM_GPUS_ON_NODE" \
  --nnodes "$SLURM_NNODES" --node-rank "$SLURM_NODEID" --master "$MASTER"'
