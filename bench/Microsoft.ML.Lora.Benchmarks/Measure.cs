using System.Diagnostics;

namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>Side-by-side timing: candidate and baseline run alternately, so drift on a noisy machine hits both.</summary>
internal static class Measure
{
    public static (double candidateMs, double baselineMs) Pair(Action candidate, Action baseline, int repetitions, int warmup = 1)
    {
        for (int i = 0; i < warmup; i++)
        {
            candidate();
            baseline();
        }
        var c = new List<double>(repetitions);
        var b = new List<double>(repetitions);
        for (int i = 0; i < repetitions; i++)
        {
            // Alternate which one goes first so neither always runs on a warmer cache.
            if (i % 2 == 0)
            {
                c.Add(Time(candidate));
                b.Add(Time(baseline));
            }
            else
            {
                b.Add(Time(baseline));
                c.Add(Time(candidate));
            }
        }
        return (Median(c), Median(b));
    }

    public static double Time(Action a)
    {
        long start = Stopwatch.GetTimestamp();
        a();
        return Stopwatch.GetElapsedTime(start).TotalMilliseconds;
    }

    public static double Median(List<double> values)
    {
        var s = values.OrderBy(v => v).ToList();
        return s.Count % 2 == 1 ? s[s.Count / 2] : (s[s.Count / 2 - 1] + s[s.Count / 2]) / 2;
    }

    /// <summary>Peak resident set size (VmHWM) in MiB since the last <see cref="ResetPeakRss"/>; Linux only.</summary>
    public static double PeakRssMiB() => ReadStatusKiB("VmHWM:") / 1024.0;

    /// <summary>Current resident set size in MiB; Linux only.</summary>
    public static double RssMiB() => ReadStatusKiB("VmRSS:") / 1024.0;

    /// <summary>Resets the kernel's peak-RSS counter (writing 5 to /proc/self/clear_refs).</summary>
    public static void ResetPeakRss()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        if (File.Exists("/proc/self/clear_refs")) File.WriteAllText("/proc/self/clear_refs", "5");
    }

    private static long ReadStatusKiB(string key)
    {
        const string status = "/proc/self/status";
        if (!File.Exists(status)) return 0;
        string? line = File.ReadLines(status).FirstOrDefault(l => l.StartsWith(key, StringComparison.Ordinal));
        if (line is null) return 0;
        return long.Parse(line[key.Length..].Trim().Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture);
    }
}
