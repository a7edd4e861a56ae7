#!/usr/bin/env bash
# GPU check for a Linux CUDA machine without the .NET SDK, without internet and without the TorchSharp CUDA package,
# but with a PyTorch install (its torch/lib holds libtorch with CUDA).
#
#   scripts/gpu-check.sh bundle [--out FILE]
#       On a machine with the .NET SDK: publishes scripts/gpu-check (the CUDA tests, linked from the test projects, with a
#       small runner, plus a LoRA vs full fine-tuning step timing) self-contained for linux-x64, WITHOUT libtorch
#       (no TorchSharp-cpu/-cuda runtime package: only TorchSharp.dll and libLibTorchSharp.so), adds this script and
#       scripts/gpu-check/peft_step.py, and writes one compressed tarball
#       (default scripts/gpu-check/bin/gpu-check-linux-x64.tar.gz, ignored by git; must stay under 64 MiB).
#
#   scripts/gpu-check.sh run [--bundle FILE] [--torch-lib DIR] [--out DIR] [--steps N] [--batch B] [--seq T] [--no-peft]
#       On the GPU machine: unpacks the bundle, finds torch/lib (python3 -c 'import torch'), or uses --torch-lib DIR
#       (any directory holding libtorch*.so / libc10*.so, e.g. the CPU libtorch of the NuGet cache for a dry run),
#       checks libLibTorchSharp.so's undefined symbols against that libtorch (ldd -r, nm -D: TorchSharp 0.107 is built
#       for libtorch 2.10; another version may lack symbols, and they are listed), then runs the checker with
#       LD_LIBRARY_PATH=torch/lib and libtorch_cuda.so preloaded, and the PEFT side-by-side (peft_step.py) when
#       `import peft` works. Results (log, JSON) go to --out (default: $OUT if set, else ./gpu-check-out).
#       Exit code: the checker's (0 all passed, 1 a failure, 2 CUDA not available, 3 libtorch did not load).
#
#   With the session's device tool (the repository is copied to the GPU machine; the bundle is git-ignored, so carry it):
#       run(command="scripts/gpu-check.sh run --bundle scripts/gpu-check/bin/gpu-check-linux-x64.tar.gz --out $OUT",
#           carry=["scripts/gpu-check/bin/gpu-check-linux-x64.tar.gz"], timeout_s=300)
#
#   Dry run without a GPU (proves the loading path; CUDA tests report skipped, exit code 2):
#       scripts/gpu-check.sh run --torch-lib ~/.nuget/packages/libtorch-cpu-linux-x64/2.10.0/runtimes/linux-x64/native --out /tmp/gc
#
#   Environment: LORA_CUDA_TESTS_ON_CPU=1 makes the CPU stand in for the GPU in the tests (a dry run of their code).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mode="${1:-}"; shift || true

die() { echo "gpu-check.sh: $*" >&2; exit 64; }

bundle() {
  local repo out stage
  repo="$(cd "$here/.." && pwd)"
  out="$here/gpu-check/bin/gpu-check-linux-x64.tar.gz"
  while [ $# -gt 0 ]; do
    case "$1" in
      --out) out="$2"; shift 2 ;;
      *) die "bundle: unknown argument $1" ;;
    esac
  done
  stage="$(mktemp -d)"
  trap 'rm -rf "$stage"' RETURN
  echo "== publish scripts/gpu-check (self-contained linux-x64, no libtorch)"
  dotnet publish "$repo/scripts/gpu-check/GpuCheck.csproj" -c Release -r linux-x64 --self-contained true \
    -p:DebugType=none -p:GenerateDocumentationFile=false -p:SatelliteResourceLanguages=en \
    -o "$stage/gpu-check/app" -nologo -v:q
  # Guard: no libtorch may be in the bundle (it comes from the GPU machine's PyTorch).
  if find "$stage/gpu-check/app" -name 'libtorch*.so*' -o -name 'libc10*.so*' | grep -q .; then
    die "bundle: libtorch found in the publish output; the checker must not reference a TorchSharp runtime package"
  fi
  # XML docs and a Windows-only ONNX Runtime DLL that a transitive package copies: not needed on Linux.
  rm -f "$stage"/gpu-check/app/*.xml "$stage"/gpu-check/app/onnxruntime.dll
  mkdir -p "$stage/gpu-check/scripts/gpu-check"
  cp "$here/gpu-check.sh" "$stage/gpu-check/scripts/"
  cp "$here/gpu-check/peft_step.py" "$stage/gpu-check/scripts/gpu-check/"
  git -C "$repo" rev-parse HEAD > "$stage/gpu-check/COMMIT" 2>/dev/null || echo unknown > "$stage/gpu-check/COMMIT"
  mkdir -p "$(dirname "$out")"
  tar -C "$stage" -cf - gpu-check | gzip -9 > "$out.tmp"
  mv "$out.tmp" "$out"
  local bytes; bytes=$(stat -c %s "$out")
  echo "== bundle: $out ($((bytes / 1024 / 1024)) MiB, $bytes bytes; unpacked $(du -sm "$stage/gpu-check" | cut -f1) MiB)"
  [ "$bytes" -lt $((64 * 1024 * 1024)) ] || die "bundle is over 64 MiB"
}

run() {
  local bundle_file="" torch_lib="" out="${OUT:-$PWD/gpu-check-out}" peft=1 app_args=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --bundle) bundle_file="$2"; shift 2 ;;
      --torch-lib) torch_lib="$2"; shift 2 ;;
      --out) out="$2"; shift 2 ;;
      --steps|--batch|--seq) app_args+=("$1" "$2"); shift 2 ;;
      --no-peft) peft=0; shift ;;
      *) die "run: unknown argument $1" ;;
    esac
  done
  mkdir -p "$out"; out="$(cd "$out" && pwd)"
  exec > >(tee -a "$out/gpu-check.log") 2>&1

  # The checker: next to this script when it runs from an unpacked bundle, else unpacked from --bundle.
  local root=""
  if [ -x "$here/../app/gpu-check" ]; then
    root="$(cd "$here/.." && pwd)"
  else
    [ -n "$bundle_file" ] || bundle_file="$here/gpu-check/bin/gpu-check-linux-x64.tar.gz"
    [ -f "$bundle_file" ] || die "run: no bundle at $bundle_file (make it with: scripts/gpu-check.sh bundle)"
    local unpack; unpack="$(mktemp -d)"
    tar -C "$unpack" -xzf "$bundle_file"
    root="$unpack/gpu-check"
  fi
  echo "== gpu-check $(cat "$root/COMMIT" 2>/dev/null) on $(hostname) at $(date -u +%FT%TZ)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi: not found"

  if [ -z "$torch_lib" ]; then
    torch_lib="$(python3 -c 'import torch,os;print(os.path.join(os.path.dirname(torch.__file__),"lib"))' 2>/dev/null || true)"
    [ -n "$torch_lib" ] || die "run: no --torch-lib and python3 cannot import torch"
    python3 -c 'import torch;print("python torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' || true
  fi
  [ -d "$torch_lib" ] || die "run: torch lib directory $torch_lib does not exist"
  torch_lib="$(cd "$torch_lib" && pwd)"
  echo "== torch lib: $torch_lib"
  ls "$torch_lib" | grep -E '^lib(torch|c10)' | tr '\n' ' '; echo

  symbols "$root/app/libLibTorchSharp.so" "$torch_lib" "$out"

  echo "== checker"
  local rc=0
  LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" DOTNET_gcServer=0 \
    "$root/app/gpu-check" --torch-lib "$torch_lib" --out "$out" ${app_args[@]+"${app_args[@]}"} || rc=$?
  echo "== checker exit code $rc"

  if [ "$peft" = 1 ]; then
    echo "== PEFT side by side"
    if python3 -c 'import torch, transformers, peft' 2>/dev/null; then
      python3 "$root/scripts/gpu-check/peft_step.py" --out "$out/peft_step.json" ${app_args[@]+"${app_args[@]}"} || echo "peft_step.py failed (exit $?)"
    else
      echo "skipped: python3 cannot import torch, transformers and peft"
    fi
  fi
  echo "== done: results in $out"
  return "$rc"
}

# Undefined symbols of libLibTorchSharp.so that the given libtorch does not define: what a libtorch other than 2.10 lacks.
symbols() {
  local lib="$1" torch_lib="$2" out="$3"
  echo "== symbols: $lib against $torch_lib"
  if ! command -v nm >/dev/null; then
    echo "nm not found (binutils); falling back to ldd -r only"
  else
    # Defined: every libtorch/c10 library in torch_lib plus the system libraries the loader resolves (libstdc++, libc…).
    local deps; deps=$(LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ldd "$lib" 2>/dev/null | awk '/=> \// {print $3} /^[[:space:]]+\// {print $1}' | while read -r f; do [ -f "$f" ] && echo "$f"; done || true)
    nm -D --defined-only "$torch_lib"/lib*.so* $deps 2>/dev/null | awk 'NF >= 3 {print $3}' | sed 's/@.*//' | LC_ALL=C sort -u > "$out/torch-defined.txt" || true
    # Strong imports only (weak ones, e.g. TLS init hooks, may stay unresolved). _ZSt21ios_base_library_initv is GCC 13's
    # never-called marker that build/TorchSharpNativeFix.targets marks weak; it is not a libtorch symbol.
    nm -D --undefined-only "$lib" | awk '$1 == "U" {print $2}' | sed 's/@.*//' | grep -v -x '_ZSt21ios_base_library_initv' | LC_ALL=C sort -u > "$out/torchsharp-needs.txt"
    LC_ALL=C comm -23 "$out/torchsharp-needs.txt" "$out/torch-defined.txt" > "$out/missing-symbols.txt"
    local n; n=$(wc -l < "$out/missing-symbols.txt")
    echo "symbols libLibTorchSharp.so imports: $(wc -l < "$out/torchsharp-needs.txt"); not defined by this libtorch or the system libraries: $n"
    if [ "$n" -gt 0 ]; then
      if command -v c++filt >/dev/null; then c++filt < "$out/missing-symbols.txt" > "$out/missing-symbols-demangled.txt"; fi
      head -n 40 "$out/missing-symbols-demangled.txt" 2>/dev/null || head -n 40 "$out/missing-symbols.txt"
      [ "$n" -le 40 ] || echo "... ($n in all: $out/missing-symbols.txt)"
    fi
  fi
  if command -v ldd >/dev/null; then
    LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ldd -r "$lib" > "$out/ldd-r.txt" 2>&1 || true
    echo "ldd -r: $(grep -c 'undefined symbol' "$out/ldd-r.txt" || true) undefined symbols, $(grep -c 'not found' "$out/ldd-r.txt" || true) libraries/versions not found (full output: $out/ldd-r.txt)"
    grep 'not found' "$out/ldd-r.txt" | head -n 10 || true
  fi
}

case "$mode" in
  bundle) bundle "$@" ;;
  run) run "$@" ;;
  *) die "usage: $0 bundle [--out FILE] | run [--bundle FILE] [--torch-lib DIR] [--out DIR] [--steps N] [--batch B] [--seq T] [--no-peft]" ;;
esac
