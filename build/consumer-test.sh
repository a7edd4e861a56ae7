#!/usr/bin/env bash
# Consumer test: pack the three packages into a local folder feed, create a fresh console app outside the
# solution that references Microsoft.ML.Lora (and the CPU Torch runtime) from that feed and NuGet, build it,
# and run a tiny LoRA fine-tune with a Model.Save/Model.Load round trip on a tiny BERT.
# Prints "consumer test: passed" or fails with a non-zero exit code.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d /tmp/lora-consumer.XXXXXX)"
trap 'rm -rf "$work"' EXIT
# A unique version per run, so the NuGet cache never serves an older build of our packages.
version="0.0.0-consumer.$(date +%s)"

echo "== pack $version"
for project in Microsoft.ML.Lora.TorchSharp Microsoft.ML.Lora.Models Microsoft.ML.Lora; do
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
cat > "$app/ConsumerApp.csproj" <<XML
<Project Sdk="Microsoft.NET.Sdk">
  <PropertyGroup>
    <OutputType>Exe</OutputType>
    <TargetFramework>net10.0</TargetFramework>
    <Nullable>enable</Nullable>
    <ImplicitUsings>enable</ImplicitUsings>
    <TreatWarningsAsErrors>true</TreatWarningsAsErrors>
  </PropertyGroup>
  <ItemGroup>
    <PackageReference Include="Microsoft.ML.Lora" Version="$version" />
    <PackageReference Include="TorchSharp-cpu" Version="0.107.0" />
  </ItemGroup>
</Project>
XML
cp "$repo/build/ConsumerProgram.cs.txt" "$app/Program.cs"

echo "== build consumer app"
if ! (cd "$app" && dotnet build -c Release --nologo > "$work/build.log" 2>&1); then
  cat "$work/build.log"; echo "consumer test: FAILED (build)"; exit 1
fi
grep -E "TorchSharp native fix" "$work/build.log" || echo "(no libstdc++ fix needed on this machine)"
echo "== run consumer app"
(cd "$app" && dotnet run -c Release --no-build)
echo "consumer test: passed"
