#!/usr/bin/env bash
# Consumer test: pack the three packages into a local folder feed, create a fresh console app outside the
# solution that references Microsoft.ML.Lora (and the CPU Torch runtime) from that feed and NuGet, build it,
# and run a tiny LoRA fine-tune with a Model.Save/Model.Load round trip on a tiny BERT; that app also exports the model
# to ONNX with its Transform scores. Then a second fresh app that references only Microsoft.ML.Lora.Onnx is published
# (framework-dependent, for this machine's runtime identifier): its publish folder must hold no libtorch,
# libLibTorchSharp or TorchSharp library, and it must reproduce the TorchSharp scores within 1e-4.
#   build/consumer-test.sh            the test (as CI runs it)
#   build/consumer-test.sh --sizes    also publish the TorchSharp app the same way and print both folder sizes
# Prints "consumer test: passed" or fails with a non-zero exit code.
set -euo pipefail
sizes=false
[ "${1:-}" = "--sizes" ] && sizes=true
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d /tmp/lora-consumer.XXXXXX)"
trap 'rm -rf "$work"' EXIT
# A unique version per run, so the NuGet cache never serves an older build of our packages.
version="0.0.0-consumer.$(date +%s)"

echo "== pack $version"
for project in Microsoft.ML.Lora.TorchSharp Microsoft.ML.Lora.Models Microsoft.ML.Lora Microsoft.ML.Lora.Onnx; do
  dotnet pack "$repo/src/$project/$project.csproj" -c Release -o "$work/feed" -p:Version="$version" --nologo -v quiet
  ls "$work/feed/$project.$version.nupkg" > /dev/null
done

app="$work/app"
mkdir -p "$app"
cat > "$app/NuGet.config" <<XML
<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <packageSources>
    <clear />
    <add key="local" value="$work/feed" />
    <add key="nuget.org" value="https://api.nuget.org/v3/index.json" />
  </packageSources>
</configuration>
XML
# A console app project referencing the given packages ("Id Version" pairs), warnings as errors.
write_app_project() {
  local path="$1"; shift
  local references=""
  while [ $# -gt 0 ]; do
    references="$references    <PackageReference Include=\"$1\" Version=\"$2\" />"$'\n'
    shift 2
  done
  cat > "$path" <<XML
<Project Sdk="Microsoft.NET.Sdk">
  <PropertyGroup>
    <OutputType>Exe</OutputType>
    <TargetFramework>net10.0</TargetFramework>
    <Nullable>enable</Nullable>
    <ImplicitUsings>enable</ImplicitUsings>
    <TreatWarningsAsErrors>true</TreatWarningsAsErrors>
  </PropertyGroup>
  <ItemGroup>
${references}  </ItemGroup>
</Project>
XML
}
write_app_project "$app/ConsumerApp.csproj" Microsoft.ML.Lora "$version" TorchSharp-cpu 0.107.0
cp "$repo/build/ConsumerProgram.cs.txt" "$app/Program.cs"

echo "== build consumer app"
if ! (cd "$app" && dotnet build -c Release --nologo > "$work/build.log" 2>&1); then
  cat "$work/build.log"; echo "consumer test: FAILED (build)"; exit 1
fi
grep -E "TorchSharp native fix" "$work/build.log" || echo "(no libstdc++ fix needed on this machine)"
echo "== run consumer app"
(cd "$app" && dotnet run -c Release --no-build -- "$work/export")

rid="$(dotnet --info | awk '/RID:/ {print $2; exit}')"
onnx_app="$work/onnx-app"
mkdir -p "$onnx_app"
cp "$app/NuGet.config" "$onnx_app/NuGet.config"
write_app_project "$onnx_app/ConsumerOnnxApp.csproj" Microsoft.ML.Lora.Onnx "$version"
cp "$repo/build/ConsumerOnnxProgram.cs.txt" "$onnx_app/Program.cs"

echo "== publish ONNX consumer app ($rid, framework-dependent)"
publish="$work/onnx-publish"
if ! (cd "$onnx_app" && dotnet publish -c Release -r "$rid" --self-contained false -o "$publish" --nologo > "$work/publish.log" 2>&1); then
  cat "$work/publish.log"; echo "consumer test: FAILED (publish of the ONNX app)"; exit 1
fi
torch_files="$(find "$publish" \( -iname 'libtorch*' -o -iname 'libLibTorchSharp*' -o -iname 'TorchSharp*.dll' \) -print)"
if [ -n "$torch_files" ]; then
  echo "$torch_files"; echo "consumer test: FAILED (the ONNX app's publish folder holds TorchSharp/libtorch files)"; exit 1
fi
onnx_size="$(du -sb "$publish" | cut -f1)"
echo "ONNX app publish folder: $((onnx_size / 1048576)) MiB ($onnx_size bytes), no libtorch/TorchSharp files"
echo "== run ONNX consumer app"
dotnet "$publish/ConsumerOnnxApp.dll" "$work/export"

if $sizes; then
  echo "== publish the TorchSharp consumer app the same way (size comparison)"
  (cd "$app" && dotnet publish -c Release -r "$rid" --self-contained false -o "$work/torch-publish" --nologo > "$work/publish-torch.log" 2>&1) \
    || { cat "$work/publish-torch.log"; exit 1; }
  torch_size="$(du -sb "$work/torch-publish" | cut -f1)"
  echo "publish folder sizes ($rid, framework-dependent): Microsoft.ML.Lora.Onnx app $((onnx_size / 1048576)) MiB, Microsoft.ML.Lora + TorchSharp-cpu app $((torch_size / 1048576)) MiB"
fi
echo "consumer test: passed"
