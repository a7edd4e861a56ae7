using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>The machine's fp32 matmul rate through libtorch: the hardware limit that step FLOP counts are compared to.</summary>
internal static class LimitSuite
{
    /// <summary>Median GFLOP/s of an n×n by n×n fp32 matmul.</summary>
    public static double MatmulGflops(int n = 2048, int reps = 5)
    {
        using var a = randn(n, n);
        using var b = randn(n, n);
        var times = new List<double>();
        for (int i = 0; i < reps + 1; i++)
        {
            double ms = Measure.Time(() => { using var s = NewDisposeScope(); a.matmul(b); });
            if (i > 0) times.Add(ms);
        }
        return 2.0 * n * n * (double)n / (Measure.Median(times) / 1000) / 1e9;
    }
}
