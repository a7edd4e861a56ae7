using System.Diagnostics;
using System.Globalization;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>
/// Peak memory of a training set-up, measured in a fresh child process (<c>--probe-memory NAME</c>) so that one set-up's
/// freed memory cannot hide another's peak: the child builds the set-up, resets the kernel's peak-RSS counter, runs a few
/// steps and prints the peak resident set size above what it held before the first step (model weights, data, optimizer
/// object), i.e. activations, gradients, optimizer state and workspace.
/// </summary>
internal static class MemoryProbe
{
    private const string Marker = "PEAK_ABOVE_MIB";

    /// <summary>Entry point of the child process: runs the named set-up's probe (<see cref="ImageSuite"/>'s or <see cref="TrainingSuite"/>'s).</summary>
    public static void Run(string name)
    {
        if (ImageSuite.OwnsProbe(name))
        {
            ImageSuite.ProbeMemory(name);
        }
        else
        {
            TrainingSuite.ProbeMemory(name);
        }
    }

    /// <summary>In the child: prints the peak RSS above the current one over <paramref name="steps"/> calls of <paramref name="step"/>.</summary>
    public static void Report(Action step, int steps = 3)
    {
        Measure.ResetPeakRss();
        double before = Measure.RssMiB();
        for (int i = 0; i < steps; i++) step();
        Console.WriteLine(FormattableString.Invariant($"{Marker} {Measure.PeakRssMiB() - before:F1}"));
    }

    /// <summary>Runs the probe <paramref name="name"/> in a fresh process of this program (same thread count) and returns its peak in MiB.</summary>
    public static double InChild(string name)
    {
        string self = Environment.ProcessPath!;
        var psi = new ProcessStartInfo(self) { RedirectStandardOutput = true, UseShellExecute = false };
        if (Path.GetFileNameWithoutExtension(self) == "dotnet") psi.ArgumentList.Add(typeof(MemoryProbe).Assembly.Location);
        psi.ArgumentList.Add("--probe-memory");
        psi.ArgumentList.Add(name);
        psi.ArgumentList.Add("--threads");
        psi.ArgumentList.Add(get_num_threads().ToString(CultureInfo.InvariantCulture));
        using var p = Process.Start(psi)!;
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        string? line = output.Split('\n').FirstOrDefault(l => l.StartsWith(Marker, StringComparison.Ordinal));
        if (p.ExitCode != 0 || line is null) throw new InvalidOperationException($"Memory probe {name} failed (exit {p.ExitCode}): {output}");
        return double.Parse(line.Split(' ')[1], CultureInfo.InvariantCulture);
    }
}
