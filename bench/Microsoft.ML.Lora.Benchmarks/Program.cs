using Microsoft.ML.Lora.Benchmarks;
using static TorchSharp.torch;

// Usage: dotnet run --project bench/Microsoft.ML.Lora.Benchmarks -c Release -- [all|limit|layers|encoder|training|finetune|memory|serving|images|peer|longtext ...] [--quick] [--threads N]
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
        case "--probe-bf16": set_num_threads(threads); Bf16Suite.Probe(quick); return;
        case "--probe-recompute": set_num_threads(threads); RecomputeSuite.Probe(args[++i], int.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture), int.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture), i + 1 < args.Length ? double.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture) : 0); return;
        default: suites.Add(args[i]); break;
    }
}
set_num_threads(threads);
if (probe is not null)
{
    MemoryProbe.Run(probe);
    return;
}
if (servingProbe is not null)
{
    ServingSuite.ProbeInProcess(servingProbe[0], int.Parse(servingProbe[1], System.Globalization.CultureInfo.InvariantCulture), servingProbe[2] == "merged");
    return;
}
if (suites.Count == 0 || suites.Contains("all")) suites = new(StringComparer.OrdinalIgnoreCase) { "limit", "layers", "encoder", "training", "finetune", "memory", "serving", "images", "peer", "longtext" };

string repoRoot = FindRepoRoot();
var report = new BenchReport(Path.Combine(repoRoot, "bench", "results"));
var runLoad = new MachineLoad();
using var limit = new LimitSuite();
report.Note(FormattableString.Invariant($"fp32 matmul limit at start-up (2048² × 2048², libtorch, {threads} threads): {limit.Sample("start-up"):F1} GFLOP/s"));
if (suites.Contains("layers")) LayerSuite.Run(report, quick);
if (suites.Contains("encoder")) EncoderSuite.Run(report, threads, quick);
if (suites.Contains("training")) TrainingSuite.Run(report, limit, quick);
if (suites.Contains("peer")) PeerSuite.Run(report, repoRoot, threads, quick);
if (suites.Contains("finetune")) FineTuneSuite.Run(report, repoRoot, threads, quick);
if (suites.Contains("memory")) MemorySuite.Run(report, quick);
if (suites.Contains("serving")) ServingSuite.Run(report, repoRoot, quick);
if (suites.Contains("images")) ImageSuite.Run(report, repoRoot, quick);
if (suites.Contains("longtext")) LongTextSuite.Run(report, repoRoot, quick);
if (suites.Contains("recompute")) RecomputeSuite.Run(report, threads, quick);
if (suites.Contains("bf16")) Bf16Suite.Run(report, threads, quick);
if (suites.Contains("kernels")) KernelSuite.Run(report, quick);
if (suites.Contains("reliability")) ReliabilitySuite.Run(report, repoRoot, quick);
report.Note(runLoad.Summary("the whole run"));
report.Write(threads);

static string FindRepoRoot()
{
    for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        if (File.Exists(Path.Combine(d.FullName, "Microsoft.ML.Lora.sln"))) return d.FullName;
    return Directory.GetCurrentDirectory();
}
