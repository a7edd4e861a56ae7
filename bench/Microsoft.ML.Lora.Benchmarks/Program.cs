using Microsoft.ML.Lora.Benchmarks;
using static TorchSharp.torch;

// Usage: dotnet run --project bench/Microsoft.ML.Lora.Benchmarks -c Release -- [all|limit|layers|encoder|training|finetune|memory|serving|images ...] [--quick] [--threads N]
// Writes bench/results/latest.md and latest.json (and a dated copy under bench/results/history/) plus PNG charts.
var suites = new HashSet<string>(StringComparer.OrdinalIgnoreCase);
bool quick = false;
int threads = Environment.ProcessorCount;
string? probe = null;
string[]? servingProbe = null;
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--quick": quick = true; break;
        case "--threads": threads = int.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture); break;
        case "--probe-memory": probe = args[++i]; break;
        case "--probe-serving": servingProbe = [args[++i], args[++i], args[++i]]; break;
        default: suites.Add(args[i]); break;
    }
}
set_num_threads(threads);
if (probe is not null)
{
    TrainingSuite.ProbeMemory(probe);
    return;
}
if (servingProbe is not null)
{
    ServingSuite.ProbeInProcess(servingProbe[0], int.Parse(servingProbe[1], System.Globalization.CultureInfo.InvariantCulture), servingProbe[2] == "merged");
    return;
}
if (suites.Count == 0 || suites.Contains("all")) suites = new(StringComparer.OrdinalIgnoreCase) { "limit", "layers", "encoder", "training", "finetune", "memory", "serving", "images" };

string repoRoot = FindRepoRoot();
var report = new BenchReport(Path.Combine(repoRoot, "bench", "results"));
double limit = LimitSuite.MatmulGflops();
report.Note(FormattableString.Invariant($"fp32 matmul limit (2048² × 2048², libtorch, {threads} threads): {limit:F1} GFLOP/s"));
if (suites.Contains("layers")) LayerSuite.Run(report, quick);
if (suites.Contains("encoder")) EncoderSuite.Run(report, threads, quick);
if (suites.Contains("training")) TrainingSuite.Run(report, limit, quick);
if (suites.Contains("finetune")) FineTuneSuite.Run(report, repoRoot, threads, quick);
if (suites.Contains("memory")) MemorySuite.Run(report, quick);
if (suites.Contains("serving")) ServingSuite.Run(report, repoRoot, quick);
if (suites.Contains("images")) ImageSuite.Run(report, quick);
if (suites.Contains("reliability")) ReliabilitySuite.Run(report, repoRoot, quick);
report.Write(threads);

static string FindRepoRoot()
{
    for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        if (File.Exists(Path.Combine(d.FullName, "Microsoft.ML.Lora.sln"))) return d.FullName;
    return Directory.GetCurrentDirectory();
}
