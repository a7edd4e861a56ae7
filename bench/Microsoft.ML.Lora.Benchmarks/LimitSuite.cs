using Microsoft.ML.OnnxRuntime;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>
/// The machine's fp32 matmul rate, the limit that step FLOP counts are compared to, sampled again and again between
/// the steps it divides (call <see cref="Sample"/> before, between and after them) so a machine that slows down
/// mid-run shows as a spread instead of a wrong ratio. Backends: libtorch (TorchSharp's, MKL), and when given the
/// PyTorch peer, OpenBLAS (torch.mm in python3-torch) and oneDNN (python3-torch's mkldnn_linear), and ONNX Runtime's
/// MLAS (a one-node MatMul graph with a constant B). Shapes: 2048³, and the MiniLM linear layers at 32×64 tokens.
/// </summary>
internal sealed class LimitSuite : IDisposable
{
    public const string LibTorch = "libtorch (MKL)";
    public const string OpenBlas = "OpenBLAS (python3-torch)";
    public const string OneDnn = "oneDNN 2.6 (python3-torch)";
    public const string OnnxRuntime = "ONNX Runtime (MLAS)";
    public const string Square = "2048³";
    public const string LinearShapes = "MiniLM linear shapes";

    private static readonly (int m, int k, int n, int count)[] SquareSet = [(2048, 2048, 2048, 1)];
    // One encoder layer at 32×64 = 2048 tokens: q, k, v, attention output (384→384), intermediate (384→1536), output (1536→384).
    private static readonly (int m, int k, int n, int count)[] LinearSet = [(2048, 384, 384, 4), (2048, 384, 1536, 1), (2048, 1536, 384, 1)];

    private readonly PythonPeer? _peer;
    private readonly Dictionary<(int, int, int), (InferenceSession session, OrtValue input, OrtValue output)> _ort = new();
    private readonly Dictionary<string, List<double>> _samples = new();
    private readonly List<string> _when = new();

    /// <param name="peer">The running PyTorch peer for the OpenBLAS and oneDNN rates, or null.</param>
    /// <param name="threads">Threads for ONNX Runtime (libtorch's are set process-wide), or 0 to leave ONNX Runtime out.</param>
    public LimitSuite(PythonPeer? peer = null, int onnxRuntimeThreads = 0)
    {
        _peer = peer;
        if (onnxRuntimeThreads <= 0) return;
        foreach (var (m, k, n, _) in SquareSet.Concat(LinearSet))
        {
            var rng = new Random(0);
            float[] b = Enumerable.Range(0, k * n).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
            using var options = new SessionOptions { IntraOpNumThreads = onnxRuntimeThreads, InterOpNumThreads = 1 };
            var session = new InferenceSession(OnnxMatMulModel.Create(m, k, n, b), options);
            float[] a = Enumerable.Range(0, m * k).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
            _ort[(m, k, n)] = (session, OrtValue.CreateTensorValueFromMemory(a, [m, k]), OrtValue.CreateTensorValueFromMemory(new float[m * n], [m, n]));
        }
    }

    /// <summary>The labels of the samples taken so far, in order ("before", "between 1", …).</summary>
    public IReadOnlyList<string> When => _when;

    /// <summary>Samples every backend on both shape sets; returns libtorch's 2048³ rate (GFLOP/s).</summary>
    public double Sample(string when)
    {
        _when.Add(when);
        Add(LibTorch, Square, Rate(SquareSet, 3, LibTorchMs));
        Add(LibTorch, LinearShapes, Rate(LinearSet, 5, LibTorchMs));
        if (_peer is not null)
        {
            Add(OpenBlas, Square, Rate(SquareSet, 3, (m, k, n, r) => _peer.MatmulMs(m, k, n, r)));
            Add(OpenBlas, LinearShapes, Rate(LinearSet, 5, (m, k, n, r) => _peer.MatmulMs(m, k, n, r)));
            Add(OneDnn, Square, Rate(SquareSet, 3, (m, k, n, r) => _peer.MatmulMs(m, k, n, r, oneDnn: true)));
            Add(OneDnn, LinearShapes, Rate(LinearSet, 5, (m, k, n, r) => _peer.MatmulMs(m, k, n, r, oneDnn: true)));
        }
        if (_ort.Count > 0)
        {
            Add(OnnxRuntime, Square, Rate(SquareSet, 3, OrtMs));
            Add(OnnxRuntime, LinearShapes, Rate(LinearSet, 5, OrtMs));
        }
        return _samples[Key(LibTorch, Square)][^1];
    }

    /// <summary>Min, median and max GFLOP/s of one backend and shape set over the samples so far.</summary>
    public (double min, double median, double max) Spread(string backend, string shapes)
    {
        var s = _samples[Key(backend, shapes)];
        return (s.Min(), Measure.Median(s), s.Max());
    }

    /// <summary>The backends sampled.</summary>
    public IEnumerable<string> Backends => new[] { LibTorch, OpenBlas, OneDnn, OnnxRuntime }.Where(b => _samples.ContainsKey(Key(b, Square)));

    /// <summary>Median rate of <paramref name="backend"/> on its better shape set, and which set that was.</summary>
    public (double gflops, string shapes) BestMedian(string backend)
    {
        double sq = Spread(backend, Square).median, lin = Spread(backend, LinearShapes).median;
        return sq >= lin ? (sq, Square) : (lin, LinearShapes);
    }

    /// <summary>One line per backend and shape set: min / median / max over the samples.</summary>
    public IEnumerable<string> SpreadNotes()
    {
        foreach (string b in Backends)
            foreach (string shapes in new[] { Square, LinearShapes })
            {
                var (min, med, max) = Spread(b, shapes);
                yield return FormattableString.Invariant($"sgemm {b}, {shapes}: min {min:F1} / median {med:F1} / max {max:F1} GFLOP/s over {_when.Count} samples ({string.Join(", ", _when)})");
            }
    }

    /// <summary>
    /// Peak fp32 rate from the CPU flags and clock in /proc/cpuinfo: lanes × FMA units × 2 flops × GHz × cores used.
    /// Assumes 2 FMA pipes per core (AMD Zen 2–4: 2 × 256-bit, Zen 4 splitting AVX-512 into halves; AMD Zen 5, CPU family
    /// 26: 2 × 512-bit; Intel Xeon Gold/Platinum: 2 × 512-bit) and the clock /proc/cpuinfo shows (a VM shows the nominal
    /// clock; turbo is not visible, so a kernel can beat this "peak").
    /// </summary>
    public static double PeakGflops(int cores, out string assumption)
    {
        string info = File.Exists("/proc/cpuinfo") ? File.ReadAllText("/proc/cpuinfo") : "";
        string flags = info.Split('\n').FirstOrDefault(l => l.StartsWith("flags", StringComparison.Ordinal)) ?? "";
        bool amd = info.Contains("AuthenticAMD", StringComparison.Ordinal);
        bool avx512 = flags.Contains(" avx512f", StringComparison.Ordinal);
        bool fma = flags.Contains(" fma", StringComparison.Ordinal);
        // Zen 4 runs AVX-512 as two 256-bit halves: its fp32 FMA throughput per cycle is that of 2 × 256-bit pipes.
        // Zen 5 (family 26) has full 512-bit FMA pipes.
        string? familyLine = info.Split('\n').FirstOrDefault(l => l.StartsWith("cpu family", StringComparison.Ordinal));
        int family = familyLine is null ? 0 : int.Parse(familyLine[(familyLine.IndexOf(':') + 1)..].Trim(), System.Globalization.CultureInfo.InvariantCulture);
        bool wide = avx512 && (!amd || family >= 26);
        int lanes = wide ? 16 : fma ? 8 : 4;
        const int fmaUnits = 2;
        string? mhzLine = info.Split('\n').FirstOrDefault(l => l.StartsWith("cpu MHz", StringComparison.Ordinal));
        double ghz = mhzLine is null ? double.NaN
            : double.Parse(mhzLine[(mhzLine.IndexOf(':') + 1)..].Trim(), System.Globalization.CultureInfo.InvariantCulture) / 1000;
        double peak = lanes * fmaUnits * 2 * ghz * cores;
        assumption = FormattableString.Invariant(
            $"{lanes} fp32 lanes ({(wide ? "AVX-512" : fma ? "AVX2+FMA" : "SSE")}{(avx512 && amd ? (wide ? $"; AMD family {family} (Zen 5) has 512-bit pipes" : "; AMD before Zen 5 runs AVX-512 on 256-bit pipes") : "")}) × {fmaUnits} FMA units × 2 flops × {ghz:F3} GHz (cpu MHz in /proc/cpuinfo, no turbo) × {cores} cores");
        return peak;
    }

    private void Add(string backend, string shapes, double gflops)
    {
        string key = Key(backend, shapes);
        if (!_samples.TryGetValue(key, out var list)) _samples[key] = list = new List<double>();
        list.Add(gflops);
    }

    private static string Key(string backend, string shapes) => backend + " | " + shapes;

    // GFLOP/s of a set of shapes: the total FLOPs over the sum of each shape's median time × its count.
    private static double Rate((int m, int k, int n, int count)[] set, int reps, Func<int, int, int, int, double> medianMs)
    {
        double flops = 0, ms = 0;
        foreach (var (m, k, n, count) in set)
        {
            flops += 2.0 * m * k * n * count;
            ms += medianMs(m, k, n, reps) * count;
        }
        return flops / (ms / 1000) / 1e9;
    }

    private static double LibTorchMs(int m, int k, int n, int reps)
    {
        using var a = randn(m, k);
        using var b = randn(k, n);
        var times = new List<double>();
        for (int i = 0; i < reps + 1; i++)
        {
            double ms = Measure.Time(() => { using var s = NewDisposeScope(); a.matmul(b); });
            if (i > 0) times.Add(ms);
        }
        return Measure.Median(times);
    }

    private double OrtMs(int m, int k, int n, int reps)
    {
        var (session, input, output) = _ort[(m, k, n)];
        using var runOptions = new RunOptions();
        string[] inputs = ["A"], outputs = ["Y"];
        OrtValue[] inputValues = [input], outputValues = [output];
        var times = new List<double>();
        for (int i = 0; i < reps + 1; i++)
        {
            double ms = Measure.Time(() => session.Run(runOptions, inputs, inputValues, outputs, outputValues));
            if (i > 0) times.Add(ms);
        }
        return Measure.Median(times);
    }

    public void Dispose()
    {
        foreach (var (session, input, output) in _ort.Values)
        {
            input.Dispose();
            output.Dispose();
            session.Dispose();
        }
        _ort.Clear();
    }
}
