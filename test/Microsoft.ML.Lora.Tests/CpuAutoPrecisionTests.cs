using Microsoft.ML.Lora.Engine;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// The rule by which <see cref="LoraPrecision.Auto"/> picks bfloat16 on a CPU (<see cref="CpuBFloat16"/>): native
/// bfloat16 instructions, oneDNN not capped below them, a measured speed-up of at least 1.3×, and no opt-out. Driven
/// with made-up CPUs, so every branch runs on every machine; the measurement itself lives in the bench (suite bf16).
/// </summary>
[TestClass]
public sealed class CpuAutoPrecisionTests
{
    private static readonly HashSet<string> Zen4 = ["sse4_2", "avx2", "avx512f", "avx512_bf16"];
    private static readonly HashSet<string> SapphireRapids = ["avx2", "avx512f", "amx_bf16", "amx_tile"];
    private static readonly HashSet<string> Zen3 = ["sse4_2", "avx2", "fma"];

    private static Func<double> Speedup(double value) => () => value;

    private static double NotMeasured() => throw new AssertFailedException("the probe must not run when an earlier condition already decides");

    [TestMethod]
    public void NativeBFloat16_FastProbe_ChoosesBFloat16_AndSaysWhy()
    {
        var avx512 = CpuBFloat16.Decide(null, Zen4, null, Speedup(3.6));
        Assert.IsTrue(avx512.UseBFloat16);
        StringAssert.Contains(avx512.Reason, "avx512_bf16");
        StringAssert.Contains(avx512.Reason, "3.6×");

        var amx = CpuBFloat16.Decide(null, SapphireRapids, "AVX512_CORE_AMX", Speedup(5.0));
        Assert.IsTrue(amx.UseBFloat16);
        StringAssert.Contains(amx.Reason, "amx_bf16");
    }

    [TestMethod]
    public void NativeBFloat16_ProbeBelowThreshold_StaysFloat32()
    {
        Assert.IsFalse(CpuBFloat16.Decide(null, Zen4, null, Speedup(1.29)).UseBFloat16);
        Assert.IsTrue(CpuBFloat16.Decide(null, Zen4, null, Speedup(CpuBFloat16.MinimumSpeedup)).UseBFloat16, "the threshold itself qualifies");
        Assert.IsFalse(CpuBFloat16.Decide(null, Zen4, null, Speedup(0)).UseBFloat16, "a probe that failed (0) is not faster");
    }

    [TestMethod]
    public void NoNativeBFloat16_UnknownFlags_CappedIsa_OrOptOut_StayFloat32_WithoutProbing()
    {
        var avx2 = CpuBFloat16.Decide(null, Zen3, null, NotMeasured);
        Assert.IsFalse(avx2.UseBFloat16);
        StringAssert.Contains(avx2.Reason, "no avx512_bf16 or amx_bf16");

        Assert.IsFalse(CpuBFloat16.Decide(null, null, null, NotMeasured).UseBFloat16);

        foreach (string isa in new[] { "AVX2", "avx512_core", " AVX512_CORE_VNNI " })
        {
            var capped = CpuBFloat16.Decide(null, Zen4, isa, NotMeasured);
            Assert.IsFalse(capped.UseBFloat16, isa);
            StringAssert.Contains(capped.Reason, "ONEDNN_MAX_CPU_ISA");
        }

        foreach (string optOut in new[] { "1", "true", "TRUE" })
        {
            var decision = CpuBFloat16.Decide(optOut, Zen4, null, NotMeasured);
            Assert.IsFalse(decision.UseBFloat16, optOut);
            StringAssert.Contains(decision.Reason, CpuBFloat16.DisableVariable);
        }

        Assert.IsTrue(CpuBFloat16.Decide("0", Zen4, null, Speedup(2)).UseBFloat16, "0 does not opt out");
    }

    [TestMethod]
    public void ResolveEncoderDtype_Auto_FollowsTheCpuRule_ExplicitChoicesIgnoreIt()
    {
        Assert.AreEqual(ScalarType.BFloat16, DeviceResolver.ResolveEncoderDtype(LoraPrecision.Auto, CPU, () => true));
        Assert.AreEqual(ScalarType.Float32, DeviceResolver.ResolveEncoderDtype(LoraPrecision.Auto, CPU, () => false));
        Assert.AreEqual(ScalarType.Float32, DeviceResolver.ResolveEncoderDtype(LoraPrecision.Float32, CPU, () => throw new AssertFailedException("not asked")));
        Assert.AreEqual(ScalarType.BFloat16, DeviceResolver.ResolveEncoderDtype(LoraPrecision.BFloat16, CPU, () => throw new AssertFailedException("not asked")));
    }

    [TestMethod]
    public void ThisProcess_OptedOutByTheTestRun_AutoIsFloat32_AndThisCpusFlagsAreRead()
    {
        Assert.AreEqual("1", Environment.GetEnvironmentVariable(CpuBFloat16.DisableVariable), "set by FloatingPointDefaults");
        Assert.IsFalse(CpuBFloat16.IsFaster);
        StringAssert.Contains(CpuBFloat16.Reason, CpuBFloat16.DisableVariable);
        Assert.AreEqual(ScalarType.Float32, DeviceResolver.ResolveEncoderDtype(LoraPrecision.Auto, CPU));

        var flags = CpuBFloat16.CpuFlags();
        if (OperatingSystem.IsLinux())
        {
            Assert.IsNotNull(flags);
            Assert.IsTrue(flags.Contains("sse2") || flags.Contains("asimd") || flags.Count == 0 || flags.Contains("fpu"), "the flags line of /proc/cpuinfo was read");
            if (!flags.Contains("avx512_bf16") && !flags.Contains("amx_bf16"))
            {
                Assert.IsFalse(CpuBFloat16.Decide(null, flags, null, NotMeasured).UseBFloat16, "no native bfloat16 here: float32 without probing");
            }
        }
    }
}
