#!/usr/bin/env bash
# Build `lors` with candle's CUDA backend (`--features cuda`) on a machine without a CUDA
# toolkit or GPU driver: compile and link only. The toolkit comes from NVIDIA's PyPI wheels,
# all on the 13.0 release (cudarc 0.19 refuses toolkits newer than 13.4, and mixed releases
# fail in ptxas or in CCCL's header check). The driver library libcuda is linked against a
# stub built here from the cu* symbols cudarc references; the real one is loaded at run time.
#
#   scripts/cuda-build.sh            # -> target/cuda/release/lors
#
# Run time, on a GPU machine: the binary needs libcuda.so.1 (the driver) and, from a CUDA 13
# runtime, libcudart.so.13, libcublas.so.13, libcublasLt.so.13, libcurand.so.10 and
# libnvrtc.so.13 (with libnvrtc-builtins); point LD_LIBRARY_PATH at their folders (this
# script's venv has all but the driver: target/cuda/venv/lib/python3*/site-packages/nvidia/cu13/lib).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD/target/cuda
venv=$root/venv
mkdir -p "$root"
if [ ! -x "$venv/bin/nvcc-ok" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --no-cache-dir "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-crt==13.0.*" \
    "nvidia-nvvm==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-runtime==13.0.*" \
    "nvidia-cuda-nvrtc==13.0.*" "nvidia-curand" "nvidia-cublas"
  touch "$venv/bin/nvcc-ok"
fi
cu=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
export PATH="$cu/bin:$PATH" CUDA_ROOT="$cu" CUDA_PATH="$cu" CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
nvcc --version | tail -1
# Unversioned names for the linker.
link=$root/link
mkdir -p "$link"
for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
  ln -sf "$cu/lib/$lib" "$link/${lib%%.so.*}.so"
done
export CARGO_TARGET_DIR=$root RUSTFLAGS="-L $link"
# The library first (no linking against libcuda yet), then the stub from what cudarc uses.
cargo build --release --features cuda --lib
rlib=$(ls -t "$root"/release/deps/libcudarc-*.rlib | head -1)
nm -u "$rlib" 2>/dev/null | awk '$1 == "U" && $2 ~ /^cu[A-Z]/ {print $2}' | sort -u > "$link/cuda-symbols.txt"
echo "libcuda stub: $(wc -l < "$link/cuda-symbols.txt") driver symbols"
awk '{print "void " $1 "(void) {}"}' "$link/cuda-symbols.txt" > "$link/cuda-stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link/libcuda.so" "$link/cuda-stub.c"
cargo build --release --features cuda --bins
# The CUDA-only code (kernels, GPU memory readings) is linted here, where it compiles.
cargo clippy --release --features cuda --all-targets -- -D warnings
# It loads, with the stub standing in for the driver: every library it links is found.
ln -sf libcuda.so "$link/libcuda.so.1"
LD_LIBRARY_PATH="$cu/lib:$link" ldd "$root/release/lors" | grep -E "libcuda|cublas|curand|cudart"
LD_LIBRARY_PATH="$cu/lib:$link" "$root/release/lors" --version
rm "$link/libcuda.so.1"
echo "built $root/release/lors"
