using System.Diagnostics;
using System.Globalization;
using Microsoft.ML.Lora.Models;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>
/// Issue "Performance, round 2" §4: the frozen MiniLM encoder in bfloat16 (autocast's policy,
/// <see cref="BertModel.ToMixedPrecision"/>) against float32 on the CPU — a matmul, the LoRA r=8 q,v training step and
/// the inference forward at 8 × 64 — once with oneDNN's own choice of kernels and once in a child process with
/// <c>ONEDNN_MAX_CPU_ISA=AVX2</c> (no native bfloat16 instructions), side by side in each process.
/// </summary>
internal static class Bf16Suite
{
    private const string ResultPrefix = "BF16_ROW";

    // Batch 8, not 32: without native bfloat16 instructions libtorch's bfloat16 matrix products run far slower than
    // float32, and a batch of 32 made one bfloat16 step take minutes on a loaded 2-core VM.
    private const int Rows = 8;
    private static readonly string[] Bf16Flags = ["avx512_bf16", "amx_bf16", "avx512f"];

    public static void Run(BenchReport report, int threads, bool quick)
    {
        string flags = CpuBf16Flags();
        report.Note($"bf16: CPU flags {(flags.Length == 0 ? "none of avx512_bf16, amx_bf16, avx512f" : flags)}; ONEDNN_MAX_CPU_ISA={Environment.GetEnvironmentVariable("ONEDNN_MAX_CPU_ISA") ?? "(unset)"}");
        // With native bfloat16 the training step is also measured at the sample's batch size (32), which is minutes per
        // step without it.
        bool native = flags.Contains("avx512_bf16", StringComparison.Ordinal) || flags.Contains("amx_bf16", StringComparison.Ordinal);
        foreach (var (name, unit, bf16, fp32) in MeasureAll(quick, native ? [Rows, 32] : [Rows]))
        {
            AddRow(report, name, unit, bf16, fp32, "oneDNN default ISA");
        }

        foreach (var (name, unit, bf16, fp32) in MeasureInChild(threads, quick))
        {
            AddRow(report, name, unit, bf16, fp32, "ONEDNN_MAX_CPU_ISA=AVX2");
        }
    }

    private static void AddRow(BenchReport report, string name, string unit, double bf16, double fp32, string isa)
    {
        // Rates (higher is better) are compared as bf16 / fp32, times as fp32 / bf16 in the goal, so "≥ 1.3×" reads the same.
        bool isTime = unit == "ms";
        double speedup = isTime ? fp32 / bf16 : bf16 / fp32;
        report.Add(new BenchRow("bf16", $"{name} ({isa})", unit, bf16, fp32, "bfloat16 encoder", "float32 encoder",
            "bf16 ≥ 1.3× faster", speedup >= 1.3, FormattableString.Invariant($"speed-up {speedup:F2}×")));
    }

    /// <summary>Entry point of the child process: prints one line per measurement.</summary>
    public static void Probe(bool quick)
    {
        foreach (var (name, unit, bf16, fp32) in MeasureAll(quick, [Rows]))
        {
            Console.WriteLine(FormattableString.Invariant($"{ResultPrefix}\t{name}\t{unit}\t{bf16:R}\t{fp32:R}"));
        }
    }

    private static List<(string Name, string Unit, double Bf16, double Fp32)> MeasureAll(bool quick, int[] batchSizes)
    {
        int reps = quick ? 2 : 5;
        var rows = new List<(string, string, double, double)>();

        const int n = 512;
        using (var scope = NewDisposeScope())
        {
            var a32 = randn(n, n);
            var b32 = randn(n, n);
            var a16 = a32.to(ScalarType.BFloat16);
            var b16 = b32.to(ScalarType.BFloat16);
            var (bf16Ms, fp32Ms) = Measure.Pair(() => a16.matmul(b16).Dispose(), () => a32.matmul(b32).Dispose(), reps * 2);
            double flops = 2.0 * n * n * n;
            rows.Add(($"matmul {n}²", "GFLOP/s", flops / (bf16Ms / 1000) / 1e9, flops / (fp32Ms / 1000) / 1e9));
        }

        using var fp32Model = Build(ScalarType.Float32);
        using var bf16Model = Build(ScalarType.BFloat16);
        foreach (int batch in batchSizes)
        {
            using var stepData = TrainingSuite.Batch(batch, 64);
            Action fp32Step = EncoderSuite.Step(fp32Model.Model, stepData.Ids, stepData.Mask, stepData.Types, stepData.Labels);
            Action bf16Step = EncoderSuite.Step(bf16Model.Model, stepData.Ids, stepData.Mask, stepData.Types, stepData.Labels);
            var (bf16StepMs, fp32StepMs) = Measure.Pair(bf16Step, fp32Step, reps);
            rows.Add(($"MiniLM LoRA r=8 q,v training step {batch}×64", "ms", bf16StepMs, fp32StepMs));
        }

        using var data = TrainingSuite.Batch(Rows, 64);

        Action Forward(BertForSequenceClassification model) => () =>
        {
            model.eval();
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            model.call(data.Ids, data.Mask, data.Types);
        };
        var (bf16FwdMs, fp32FwdMs) = Measure.Pair(Forward(bf16Model.Model), Forward(fp32Model.Model), reps);
        rows.Add(($"MiniLM inference forward {Rows}×64, rows/s", "rows/s", Rows / (bf16FwdMs / 1000), Rows / (fp32FwdMs / 1000)));
        return rows;
    }

    private static TrainingSuite.Variants Build(ScalarType dtype)
    {
        manual_seed(0);
        var loaded = PretrainedModel.MiniLmL6V2.Load();
        loaded.Model.ToMixedPrecision(dtype);
        foreach (var p in loaded.Model.parameters()) p.requires_grad = false;
        var model = new BertForSequenceClassification(loaded.Model, 2);
        lora.inject_adapter_in_model(new LoraConfig { r = 8, lora_alpha = 16, target_modules = new List<string> { "query", "value" } }, model.Bert);
        lora.mark_only_lora_as_trainable(model);
        foreach (var (name, p) in model.named_parameters())
            if (name.StartsWith("classifier.", StringComparison.Ordinal)) p.requires_grad = true;
        return new TrainingSuite.Variants { Loaded = loaded, Model = model };
    }

    private static List<(string Name, string Unit, double Bf16, double Fp32)> MeasureInChild(int threads, bool quick)
    {
        string self = Environment.ProcessPath!;
        var psi = new ProcessStartInfo(self) { RedirectStandardOutput = true, UseShellExecute = false };
        if (Path.GetFileNameWithoutExtension(self) == "dotnet") psi.ArgumentList.Add(typeof(Bf16Suite).Assembly.Location);
        psi.ArgumentList.Add("--threads");
        psi.ArgumentList.Add(threads.ToString(CultureInfo.InvariantCulture));
        if (quick) psi.ArgumentList.Add("--quick");
        psi.ArgumentList.Add("--probe-bf16");
        psi.Environment["ONEDNN_MAX_CPU_ISA"] = "AVX2";
        using var p = Process.Start(psi)!;
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        var rows = output.Split('\n').Where(l => l.StartsWith(ResultPrefix, StringComparison.Ordinal))
            .Select(l => l.TrimEnd('\r').Split('\t'))
            .Select(f => (f[1], f[2], double.Parse(f[3], CultureInfo.InvariantCulture), double.Parse(f[4], CultureInfo.InvariantCulture)))
            .ToList();
        if (p.ExitCode != 0 || rows.Count == 0) throw new InvalidOperationException($"bf16 probe with ONEDNN_MAX_CPU_ISA=AVX2 failed (exit {p.ExitCode}): {output}");
        return rows;
    }

    private static string CpuBf16Flags()
    {
        var flags = Engine.CpuBFloat16.CpuFlags();
        return flags is null ? "unknown (no /proc/cpuinfo)" : string.Join(", ", Bf16Flags.Where(flags.Contains));
    }
}
