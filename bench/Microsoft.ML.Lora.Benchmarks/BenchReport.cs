using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;

namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>One measured comparison: a candidate against a baseline, measured side by side in this run.</summary>
internal sealed record BenchRow(
    string Suite, string Name, string Unit, double Candidate, double Baseline, string CandidateLabel, string BaselineLabel,
    string? Goal = null, bool? GoalMet = null, string? Note = null)
{
    public double Ratio => Baseline == 0 ? double.NaN : Candidate / Baseline;
}

/// <summary>Collects rows and writes bench/results/latest.{md,json}, keeping a dated copy of every run.</summary>
internal sealed class BenchReport
{
    private static readonly JsonSerializerOptions JsonOptions = new() { WriteIndented = true };
    private readonly List<BenchRow> _rows = new();
    private readonly List<string> _notes = new();

    public BenchReport(string resultsDir) => ResultsDir = resultsDir;

    /// <summary>bench/results of the repository: where results and plots go.</summary>
    public string ResultsDir { get; }

    public void Add(BenchRow row)
    {
        _rows.Add(row);
        string goal = row.Goal is null ? "" : $"  goal {row.Goal}: {(row.GoalMet == true ? "met" : "MISSED")}";
        Console.WriteLine(FormattableString.Invariant(
            $"[{row.Suite}] {row.Name}: {row.CandidateLabel} {row.Candidate:G4} {row.Unit} vs {row.BaselineLabel} {row.Baseline:G4} {row.Unit} → ratio {row.Ratio:F3}{goal}"));
    }

    public void Note(string text)
    {
        _notes.Add(text);
        Console.WriteLine("  note: " + text);
    }

    public static string Commit()
    {
        try
        {
            var psi = new ProcessStartInfo("git", "rev-parse --short HEAD") { RedirectStandardOutput = true, RedirectStandardError = true };
            using var p = Process.Start(psi)!;
            string s = p.StandardOutput.ReadToEnd().Trim();
            p.WaitForExit();
            return p.ExitCode == 0 ? s : "unknown";
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return "unknown";
        }
    }

    public static string CpuModel()
    {
        const string cpuinfo = "/proc/cpuinfo";
        if (!File.Exists(cpuinfo)) return RuntimeInformation.ProcessArchitecture.ToString();
        string? line = File.ReadLines(cpuinfo).FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal));
        return line is null ? RuntimeInformation.ProcessArchitecture.ToString() : line[(line.IndexOf(':') + 1)..].Trim();
    }

    public void Write(int torchThreads)
    {
        string resultsDir = ResultsDir;
        Directory.CreateDirectory(resultsDir);
        string commit = Commit();
        DateTime now = DateTime.UtcNow;
        var machine = new
        {
            os = RuntimeInformation.OSDescription,
            cpu = CpuModel(),
            cores = Environment.ProcessorCount,
            torch_threads = torchThreads,
            dotnet = RuntimeInformation.FrameworkDescription,
        };

        var md = new StringBuilder();
        md.AppendLine(CultureInfo.InvariantCulture, $"# Benchmark results — {now:yyyy-MM-dd HH:mm} UTC, commit {commit}");
        md.AppendLine();
        md.AppendLine(CultureInfo.InvariantCulture, $"Machine: {machine.cpu}, {machine.cores} cores, torch threads {torchThreads}, {machine.os}, {machine.dotnet}.");
        md.AppendLine("Each pair is measured side by side in this run (interleaved repetitions, median reported).");
        md.AppendLine();
        md.AppendLine("| suite | measurement | candidate | baseline | ratio | goal |");
        md.AppendLine("| --- | --- | --- | --- | --- | --- |");
        foreach (BenchRow r in _rows)
        {
            string goal = r.Goal is null ? "" : $"{r.Goal} {(r.GoalMet == true ? "✅" : "❌")}";
            md.AppendLine(FormattableString.Invariant(
                $"| {r.Suite} | {r.Name} | {r.CandidateLabel}: {r.Candidate:G4} {r.Unit} | {r.BaselineLabel}: {r.Baseline:G4} {r.Unit} | {r.Ratio:F3} | {goal} |"));
        }
        if (_notes.Count > 0)
        {
            md.AppendLine();
            md.AppendLine("Notes:");
            foreach (string n in _notes) md.AppendLine("- " + n);
        }

        string json = JsonSerializer.Serialize(new
        {
            date = now.ToString("o", CultureInfo.InvariantCulture),
            commit,
            machine,
            rows = _rows.Select(r => new
            {
                r.Suite, r.Name, r.Unit, r.CandidateLabel, r.Candidate, r.BaselineLabel, r.Baseline, r.Ratio, r.Goal, r.GoalMet, r.Note,
            }),
            notes = _notes,
        }, JsonOptions);

        string stamp = now.ToString("yyyyMMdd-HHmm", CultureInfo.InvariantCulture) + "-" + commit;
        WriteAtomically(Path.Combine(resultsDir, "latest.md"), md.ToString());
        WriteAtomically(Path.Combine(resultsDir, "latest.json"), json);
        WriteAtomically(Path.Combine(resultsDir, "history", stamp + ".md"), md.ToString());
        WriteAtomically(Path.Combine(resultsDir, "history", stamp + ".json"), json);
        Console.WriteLine($"Wrote {Path.Combine(resultsDir, "latest.md")} and .json (copy in history/{stamp}.*)");
    }

    private static void WriteAtomically(string path, string text)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        string tmp = path + ".tmp";
        File.WriteAllText(tmp, text);
        File.Move(tmp, path, overwrite: true);
    }
}
