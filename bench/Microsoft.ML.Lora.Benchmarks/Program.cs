using Microsoft.ML.Lora.Benchmarks;
using static TorchSharp.torch;

// Usage: dotnet run --project bench/Microsoft.ML.Lora.Benchmarks -c Release -- [all|layers|encoder|limit ...] [--quick] [--threads N]
// Writes bench/results/latest.md and latest.json (and a dated copy under bench/results/history/).
var suites = args.Where(a => !a.StartsWith("--", StringComparison.Ordinal)).ToHashSet(StringComparer.OrdinalIgnoreCase);
bool quick = args.Contains("--quick");
int threadsIndex = Array.IndexOf(args, "--threads");
int threads = threadsIndex >= 0 ? int.Parse(args[threadsIndex + 1], System.Globalization.CultureInfo.InvariantCulture) : Environment.ProcessorCount;
if (threadsIndex >= 0) suites.Remove(args[threadsIndex + 1]);
if (suites.Count == 0 || suites.Contains("all")) suites = new(StringComparer.OrdinalIgnoreCase) { "limit", "layers", "encoder" };

set_num_threads(threads);
var report = new BenchReport();
if (suites.Contains("limit"))
{
    double gflops = LimitSuite.MatmulGflops();
    report.Note(FormattableString.Invariant($"fp32 matmul limit (2048² × 2048², libtorch, {threads} threads): {gflops:F1} GFLOP/s"));
}
if (suites.Contains("layers")) LayerSuite.Run(report, quick);
if (suites.Contains("encoder")) EncoderSuite.Run(report, threads, quick);

string resultsDir = Path.Combine(FindRepoRoot(), "bench", "results");
report.Write(resultsDir, threads);

static string FindRepoRoot()
{
    for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        if (File.Exists(Path.Combine(d.FullName, "Microsoft.ML.Lora.sln"))) return d.FullName;
    return Directory.GetCurrentDirectory();
}
