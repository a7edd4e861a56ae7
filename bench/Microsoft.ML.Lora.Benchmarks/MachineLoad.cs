using System.Diagnostics;
using System.Globalization;

namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>
/// How busy the machine was over a measured span (Linux): load average from /proc/loadavg at both ends, and the CPU
/// time of other processes (all busy CPU time in /proc/stat minus ours and the peer's), against the cores' capacity.
/// </summary>
internal sealed class MachineLoad
{
    private const double TicksPerSecond = 100; // USER_HZ of /proc/stat and /proc/PID/stat on Linux
    private readonly long _startTicks = Stopwatch.GetTimestamp();
    private readonly string _startLoad = LoadAverage();
    private readonly double _startBusy;
    private readonly double _startSteal;
    private readonly double _startOurs = Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds;
    private readonly Func<double> _peerSeconds;
    private readonly double _startPeer;

    /// <param name="peerSeconds">CPU seconds of a child that counts as part of the measurement (the peer), or null.</param>
    public MachineLoad(Func<double>? peerSeconds = null)
    {
        _startBusy = BusySeconds(out _startSteal);
        _peerSeconds = peerSeconds ?? (() => 0);
        _startPeer = _peerSeconds();
    }

    /// <summary>CPU seconds (user + system) of process <paramref name="pid"/>, from /proc/PID/stat; 0 when unreadable.</summary>
    public static double ProcessSeconds(int pid)
    {
        string path = $"/proc/{pid}/stat";
        if (!File.Exists(path)) return 0;
        string text = File.ReadAllText(path);
        string[] f = text[(text.LastIndexOf(')') + 2)..].Split(' ');
        // After "pid (comm) ": field 3 is state (index 0); utime and stime are fields 14 and 15 (indices 11 and 12).
        return (double.Parse(f[11], CultureInfo.InvariantCulture) + double.Parse(f[12], CultureInfo.InvariantCulture)) / TicksPerSecond;
    }

    /// <summary>One line for the report, with a warning when others used more than 10 % of the cores or the load average exceeded them.</summary>
    public string Summary(string span)
    {
        double wall = Stopwatch.GetElapsedTime(_startTicks).TotalSeconds;
        double busy = BusySeconds(out double steal) - _startBusy;
        double ours = Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds - _startOurs;
        double peer = _peerSeconds() - _startPeer;
        double others = Math.Max(0, busy - ours - peer);
        int cores = Environment.ProcessorCount;
        double share = others / (wall * cores);
        string endLoad = LoadAverage();
        double load1 = Math.Max(FirstLoad(_startLoad), FirstLoad(endLoad));
        bool busyMachine = share > 0.10 || load1 > cores;
        string head = busyMachine ? "⚠ BUSY MACHINE during " : "machine load during ";
        string tail = busyMachine ? " — this span was slowed by other work; ratios measured side by side hold better than absolute rates" : "";
        return head + FormattableString.Invariant(
            $"{span}: {wall:F0} s wall on {cores} cores; CPU time ours {ours:F0} s, the peer's {peer:F0} s, other processes' {others:F0} s ({share:P0} of the cores), steal {steal - _startSteal:F1} s; load average (1/5/15 min) {_startLoad} at the start, {endLoad} at the end") + tail;
    }

    private static string LoadAverage()
    {
        const string path = "/proc/loadavg";
        return File.Exists(path) ? string.Join(' ', File.ReadAllText(path).Split(' ').Take(3)) : "n/a";
    }

    private static double FirstLoad(string load) =>
        double.TryParse(load.Split(' ')[0], NumberStyles.Float, CultureInfo.InvariantCulture, out double v) ? v : 0;

    // Busy CPU seconds of all cores since boot: user + nice + system + irq + softirq from the "cpu" line of /proc/stat
    // (idle, iowait and steal excluded; steal is returned separately: time the hypervisor gave to other guests).
    private static double BusySeconds(out double steal)
    {
        steal = 0;
        const string path = "/proc/stat";
        if (!File.Exists(path)) return 0;
        string line = File.ReadLines(path).First(l => l.StartsWith("cpu ", StringComparison.Ordinal));
        double[] v = line.Split(' ', StringSplitOptions.RemoveEmptyEntries).Skip(1).Select(s => double.Parse(s, CultureInfo.InvariantCulture)).ToArray();
        steal = v.Length > 7 ? v[7] / TicksPerSecond : 0;
        return (v[0] + v[1] + v[2] + v[5] + v[6]) / TicksPerSecond;
    }
}
