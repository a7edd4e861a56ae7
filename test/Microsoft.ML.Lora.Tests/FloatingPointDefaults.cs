using Microsoft.ML.Lora.Engine;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// Keeps <see cref="LoraPrecision.Auto"/> float32 on the CPU for this test run, through the same environment variable a
/// user sets for a fleet (<see cref="CpuBFloat16.DisableVariable"/>): most tests compare scores with float32 references
/// (ONNX Runtime, PyTorch, merged vs unmerged, checked-in files) at 1e-4 or tighter, and CI machines differ in whether
/// they have native bfloat16 (AMD EPYC with avx512_bf16, where Auto would choose bfloat16, and AVX2-only CPUs). The
/// bfloat16 encoder is tested on purpose in <see cref="MixedPrecisionTests"/>, and the Auto rule itself in
/// <see cref="CpuAutoPrecisionTests"/>. Child processes (LoadCheck, samples) inherit the variable.
/// </summary>
[TestClass]
public static class FloatingPointDefaults
{
    /// <summary>Runs once before any test of this assembly.</summary>
    [AssemblyInitialize]
    public static void KeepAutoFloat32OnCpu(TestContext context)
    {
        _ = context;
        Environment.SetEnvironmentVariable(CpuBFloat16.DisableVariable, "1");
    }
}
