using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>
/// Issue "Performance, round 2" §3: can TorchSharp reach a faster fp32 kernel for the frozen linear layers than
/// libtorch's <c>linear</c> (MKL sgemm)? The same product as a 1×1 convolution ([tokens, in, 1, 1] is a view of the
/// [tokens, in] activations, no copy) runs through oneDNN's convolution. Side by side at the MiniLM step's shapes,
/// forward and forward + input gradient (the frozen layers' backward), with the largest difference between the two.
/// </summary>
internal static class KernelSuite
{
    private static readonly (int Tokens, int In, int Out)[] Shapes = [(2048, 384, 384), (2048, 384, 1536), (2048, 1536, 384)];

    public static void Run(BenchReport report, bool quick)
    {
        int reps = quick ? 5 : 15;
        foreach (var (tokens, inF, outF) in Shapes)
        {
            using var scope = NewDisposeScope();
            var x = randn(tokens, inF);
            var w = randn(outF, inF) * 0.05;
            var b = randn(outF) * 0.05;
            var w4 = w.view(outF, inF, 1, 1);
            Tensor Linear(Tensor input) => nn.functional.linear(input, w, b);
            Tensor Conv(Tensor input) => nn.functional.conv2d(input.view(tokens, inF, 1, 1), w4, b).view(tokens, outF);
            double diff;
            using (no_grad())
            {
                diff = (Linear(x) - Conv(x)).abs().max().item<float>();
            }

            double flops = 2.0 * tokens * inF * outF;
            var (convMs, linMs) = Measure.Pair(() => { using var s = NewDisposeScope(); using var g = no_grad(); Conv(x); }, () => { using var s = NewDisposeScope(); using var g = no_grad(); Linear(x); }, reps, warmup: 3);
            report.Add(new BenchRow("kernels", $"forward {tokens}×{inF}→{outF}", "GFLOP/s", flops / convMs / 1e6, flops / linMs / 1e6,
                "1×1 conv2d (oneDNN)", "linear (MKL sgemm)", null, null, FormattableString.Invariant($"max abs diff {diff:E1}")));

            var xg = x.detach().requires_grad_(true);
            var grad = randn(tokens, outF);
            void Step(Func<Tensor, Tensor> f)
            {
                using var s = NewDisposeScope();
                var y = f(xg);
                y.backward([grad]);
                xg.grad!.zero_();
            }

            var (convStepMs, linStepMs) = Measure.Pair(() => Step(Conv), () => Step(Linear), reps, warmup: 3);
            report.Add(new BenchRow("kernels", $"forward + input gradient {tokens}×{inF}→{outF}", "GFLOP/s", 2 * flops / convStepMs / 1e6, 2 * flops / linStepMs / 1e6,
                "1×1 conv2d (oneDNN)", "linear (MKL sgemm)", null, null, null));
        }
    }
}
