using System.Diagnostics;
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Engine;

/// <summary>
/// Whether <see cref="LoraPrecision.Auto"/> runs the frozen encoder in bfloat16 on the CPU: only where the CPU has native
/// bfloat16 instructions and libtorch's bfloat16 matrix product is measured at least <see cref="MinimumSpeedup"/>× as
/// fast as its float32 one. Decided once per process.
/// </summary>
/// <remarks>
/// Measured (bench/README.md, suite <c>bf16</c>): on an AMD EPYC with <c>avx512_bf16</c> the bfloat16 encoder trained
/// the MiniLM LoRA step 1.6× faster and scored 2.5× faster than float32; on CPUs without those instructions (AVX2 only,
/// or oneDNN capped below AVX512_CORE_BF16) libtorch runs bfloat16 products in generic loops, 4–30× slower than float32.
/// The rule has three parts, all needed: the CPU lists <c>avx512_bf16</c> or <c>amx_bf16</c> (Linux: /proc/cpuinfo;
/// elsewhere the answer is no), <c>ONEDNN_MAX_CPU_ISA</c> does not cap oneDNN below AVX512_CORE_BF16, and a timed probe
/// (512² products, a few milliseconds) confirms the speed-up. Setting the environment variable
/// <see cref="DisableVariable"/> to <c>1</c> keeps <see cref="LoraPrecision.Auto"/> in float32 on every CPU (the same
/// scores on every machine of a mixed fleet); <see cref="LoraPrecision.Float32"/> does the same for one pipeline.
/// </remarks>
internal static class CpuBFloat16
{
    /// <summary>Environment variable that, set to 1 (or true), keeps <see cref="LoraPrecision.Auto"/> float32 on the CPU.</summary>
    public const string DisableVariable = "MICROSOFT_ML_LORA_CPU_AUTO_FLOAT32";

    /// <summary>The speed-up of a bfloat16 over a float32 512² matrix product below which Auto stays float32.</summary>
    public const double MinimumSpeedup = 1.3;

    private static readonly string[] NativeFlags = ["avx512_bf16", "amx_bf16"];

    // oneDNN ISA names (ONEDNN_MAX_CPU_ISA) that exclude native bfloat16 instructions.
    private static readonly HashSet<string> IsasWithoutBFloat16 = new(StringComparer.OrdinalIgnoreCase)
    {
        "SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
    };

    private static readonly Lazy<Decision> Cached = new(() => Decide(Environment.GetEnvironmentVariable(DisableVariable), CpuFlags(), Environment.GetEnvironmentVariable("ONEDNN_MAX_CPU_ISA"), MeasureSpeedup));

    /// <summary>True when Auto should run the encoder in bfloat16 on this process's CPU (decided once, then cached).</summary>
    public static bool IsFaster => Cached.Value.UseBFloat16;

    /// <summary>Why <see cref="IsFaster"/> is what it is (for logs and the README's claim).</summary>
    public static string Reason => Cached.Value.Reason;

    /// <summary>The outcome of the rule and its reason.</summary>
    internal readonly record struct Decision(bool UseBFloat16, string Reason);

    /// <summary>The rule, with its inputs passed in (tests drive it with made-up CPUs).</summary>
    internal static Decision Decide(string? disable, IReadOnlySet<string>? cpuFlags, string? maxIsa, Func<double> measureSpeedup)
    {
        if (disable is not null && (disable == "1" || disable.Equals("true", StringComparison.OrdinalIgnoreCase)))
        {
            return new(false, $"{DisableVariable}={disable}");
        }

        if (cpuFlags is null)
        {
            return new(false, "CPU flags unknown (no /proc/cpuinfo)");
        }

        string? native = NativeFlags.FirstOrDefault(cpuFlags.Contains);
        if (native is null)
        {
            return new(false, "no avx512_bf16 or amx_bf16 on this CPU");
        }

        if (maxIsa is not null && IsasWithoutBFloat16.Contains(maxIsa.Trim()))
        {
            return new(false, $"ONEDNN_MAX_CPU_ISA={maxIsa} excludes native bfloat16 kernels");
        }

        double speedup = measureSpeedup();
        return speedup >= MinimumSpeedup
            ? new(true, FormattableString.Invariant($"{native}; bfloat16 512² matmul {speedup:F1}× float32"))
            : new(false, FormattableString.Invariant($"{native}, but the bfloat16 512² matmul ran only {speedup:F2}× float32 (< {MinimumSpeedup})"));
    }

    /// <summary>The CPU's flags from /proc/cpuinfo, or null where that file does not exist.</summary>
    internal static IReadOnlySet<string>? CpuFlags()
    {
        const string cpuinfo = "/proc/cpuinfo";
        if (!RuntimeInformation.IsOSPlatform(OSPlatform.Linux) || !File.Exists(cpuinfo))
        {
            return null;
        }

        string? line = File.ReadLines(cpuinfo).FirstOrDefault(l => l.StartsWith("flags", StringComparison.Ordinal));
        return line is null
            ? new HashSet<string>(StringComparer.Ordinal)
            : line.Split(':', 2)[1].Split(' ', StringSplitOptions.RemoveEmptyEntries).ToHashSet(StringComparer.Ordinal);
    }

    /// <summary>
    /// Times a 512² bfloat16 product against a float32 one on the CPU (after a warm-up that lets oneDNN build its kernels),
    /// best of three each, alternating; returns float32 time / bfloat16 time.
    /// </summary>
    private static double MeasureSpeedup()
    {
        try
        {
            using var scope = torch.NewDisposeScope();
            using var noGrad = torch.no_grad();
            var a32 = torch.rand(512, 512);
            var b32 = torch.rand(512, 512);
            var a16 = a32.to(ScalarType.BFloat16);
            var b16 = b32.to(ScalarType.BFloat16);
            double best16 = double.MaxValue, best32 = double.MaxValue;
            for (int i = 0; i < 4; i++)
            {
                double t16 = Time(() => a16.matmul(b16).Dispose());
                double t32 = Time(() => a32.matmul(b32).Dispose());
                if (i == 0)
                {
                    continue; // warm-up: first calls build kernels
                }

                best16 = Math.Min(best16, t16);
                best32 = Math.Min(best32, t32);
            }

            return best32 / best16;
        }
        catch (ExternalException)
        {
            return 0;
        }
    }

    private static double Time(Action action)
    {
        long start = Stopwatch.GetTimestamp();
        action();
        return Stopwatch.GetElapsedTime(start).TotalMilliseconds;
    }
}
