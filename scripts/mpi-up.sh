#!/usr/bin/env bash
# Open MPI for data-parallel runs and their tests: installs Debian's openmpi-bin and
# libopenmpi-dev, and libclang (the `mpi` crate generates its bindings from mpi.h with bindgen)
# when missing. Idempotent. Then: cargo build --release --features mpi; mpirun -n 2 lors train.
set -euo pipefail
exec 9>/tmp/lors-mpi-up.lock
flock 9
if ! command -v mpirun >/dev/null || ! [ -e /usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h ] \
  || ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    openmpi-bin libopenmpi-dev libclang-dev >/dev/null
fi
mpirun --version | head -1
